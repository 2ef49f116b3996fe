"""The decode-work measurement (turbo_ds.measure.decode_work): which frames are references, the least a
frame-exact decoder must decode for a set of wanted frames, and the stage counts of PyAV's decode."""

import numpy as np
from video_utils import write_test_video

from turbo_ds.data.backends import pyav_decoder
from turbo_ds.measure.decode_work import decode_work, minimum_frames, reference_frames


def test_minimum_frames_counts_the_references_from_each_keyframe_to_the_wanted_frame():
    keyframes = np.array([0, 10])
    references = np.array([0, 2, 4, 6, 8, 10, 12, 14])
    # 5: refs 0 2 4 and itself; 7: adds 6 and itself; 11: ref 10 (its own keyframe) and itself
    assert minimum_frames(np.array([5, 7, 11]), keyframes, references) == 8
    assert minimum_frames(np.array([4]), keyframes, references) == 3  # a reference wanted counts once
    assert minimum_frames(np.array([10]), keyframes, references) == 1
    # a stream whose first keyframe is not frame 0 still starts at 0
    assert minimum_frames(np.array([3]), np.array([5]), np.array([0, 2])) == 3


def test_decode_work_on_a_b_frame_video(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_test_video(path, n=48, h=32, w=64, fps=10, gop=24)  # x264's default B-frames
    refs = reference_frames(path)
    assert 0 in refs and 24 in refs and 0 < len(refs) < 48  # keyframes are references, B-frames not all
    wanted = [3, 13, 30, 45]
    work = decode_work(path, wanted, (32, 16), refs)
    with __import__("av").open(path) as c:
        _, keyframes, _ = pyav_decoder.frame_table(c, c.streams.video[0])
    assert work["frames"] == 48 and work["wanted"] == 4 and work["references"] == len(refs)
    assert work["minimum"] == minimum_frames(np.array(wanted), keyframes, refs)
    assert len(wanted) <= work["minimum"] <= work["decoded"] < 48  # PyAV decodes no less than the least
    assert min(work["scan_s"], work["decode_s"], work["convert_s"]) > 0
    assert work["floor_s"] >= work["floor_without_scan_s"] > 0
