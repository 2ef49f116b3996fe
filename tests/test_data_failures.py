"""Broken videos: tried once per run whatever the worker or epoch, replaced the same way either way,
FFmpeg's console output kept in the failure log instead of on stderr, counts for the run summary."""

import os
import shutil
import warnings

import av
import numpy as np
import pytest
import torch
from video_utils import tiny_demo, write_test_video  # noqa: F401

from turbo_ds.data import build_dataloader
from turbo_ds.data import dataset as dataset_mod
from turbo_ds.data.decode import DecodeError, decode_frames
from turbo_ds.data.errors import FailureLog, read_entries, summary_line, write_entries
from turbo_ds.data.ffmpeg_log import FfmpegLog, condense


def cut(path) -> None:
    """Keep the first half of an mp4 (its moov atom, written last, is lost: no decoder opens it)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def cut_demo(tiny_demo, tmp_path):  # noqa: F811
    """A copy of the tiny demo's actions with one training video cut in half."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo / "videos" / "actions", root / "videos" / "actions")
    shutil.copy(tiny_demo / "actions.parquet", root / "actions.parquet")
    bad = sorted((root / "videos" / "actions" / "train").glob("*.mp4"))[0]
    cut(bad)
    return root, str(bad)


def loader(root, log_dir, num_workers=0):
    return build_dataloader(
        root / "actions.parquet",
        split="train",
        num_frames=4,
        stride=1,
        img_size=16,
        batch_size=2,
        num_workers=num_workers,
        failure_log_dir=log_dir,
    )


def epoch_items(dl, epoch):
    dl.set_epoch(epoch)
    return [(b["sample_idx"].tolist(), b["video_id"], b["video"]) for b in dl]


def test_known_failed_video_is_not_opened_again_and_replaced_the_same_way(cut_demo, tmp_path, monkeypatch):
    root, bad = cut_demo
    opened = []
    real = dataset_mod.decode_frames

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset_mod, "decode_frames", counting)
    dl = loader(root, tmp_path / "log")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per failure: the run summary reports them
        shared = [epoch_items(dl, e) for e in range(3)]
    assert opened.count(bad) == 1  # epochs 1 and 2 skip it without opening it
    entries = dl.dataset.failures.entries()
    assert [e["skipped"] for e in entries] == [False, True, True]  # one occurrence per epoch
    assert dl.dataset.failures.num_failed_videos() == 1
    assert "moov atom not found" in entries[0]["log"]  # what FFmpeg printed, kept in the record

    # A fresh log every epoch tries (and fails on) the video each time: the same batches, bit for bit.
    for e in range(3):
        fresh = epoch_items(loader(root, tmp_path / f"fresh{e}"), e)
        assert [x[:2] for x in fresh] == [x[:2] for x in shared[e]]
        assert all(torch.equal(a[2], b[2]) for a, b in zip(fresh, shared[e], strict=True))
    assert opened.count(bad) == 4


def test_workers_share_what_failed(cut_demo, tmp_path):
    """Two workers, three epochs: the cut video is decoded by one worker once, the other learns it."""
    root, bad = cut_demo
    dl = loader(root, tmp_path / "log", num_workers=2)
    for e in range(3):
        epoch_items(dl, e)
    entries = dl.dataset.failures.entries()
    assert len(entries) == 3 and [e["skipped"] for e in entries].count(False) == 1
    assert {e["path"] for e in entries} == {bad}


def test_failure_log_sees_other_writers_and_waits_for_whole_lines(tmp_path):
    a, b = FailureLog(5, tmp_path), FailureLog(5, tmp_path)  # e.g. two workers of one rank
    assert a.known_failed() == {}
    b.record("/x.mp4", "x", "unreadable", 3, "detail", "ffmpeg said")
    assert set(a.known_failed()) == {"/x.mp4"}
    with open(a.path, "a") as f:
        f.write('{"path": "/y.mp4", "rea')  # a line being written
    assert set(a.known_failed()) == {"/x.mp4"}
    with open(a.path, "a") as f:
        f.write('son": "missing"}\n')
    assert set(a.known_failed()) == {"/x.mp4", "/y.mp4"}
    a.record_skip("/x.mp4", 7)
    skip = a.entries()[-1]
    assert skip == {
        "path": "/x.mp4",
        "video_id": "x",
        "reason": "unreadable",
        "sample_idx": 7,
        "skipped": True,
    }
    assert a.num_failed_videos() == b.num_failed_videos() == 2


def test_decoder_output_kept_off_stderr_and_in_the_error(tmp_path, capfd):
    write_test_video(tmp_path / "v.mp4", n=20)
    cut(tmp_path / "v.mp4")
    for backend in ("auto", "pyav"):
        with pytest.raises(DecodeError) as ei:
            decode_frames(str(tmp_path / "v.mp4"), [0, 5], backend=backend, num_frames=20)
        assert "moov atom not found" in ei.value.log, backend
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert av.logging.get_level() is None  # PyAV's own setting is back


def test_decode_that_succeeds_with_ffmpeg_warnings_prints_nothing(tmp_path, capfd):
    """moov first, data cut at 60%: decord fails loudly ("partial file"), PyAV decodes what is there."""
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"g": "5"}
        for f in np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3)).astype(np.uint8):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    frames, used = decode_frames(str(path), list(range(0, 40, 5)), num_frames=40)
    assert frames.shape == (8, 32, 32, 3) and used == "pyav"
    assert capfd.readouterr().err == ""


def test_capture_restores_stderr_when_the_body_raises(capfd):
    log = FfmpegLog()
    with pytest.raises(ValueError), log:
        os.write(2, b"inside\ninside\n")
        raise ValueError("boom")
    os.write(2, b"after\n")
    assert log.text == "inside (x2)"
    assert capfd.readouterr().err == "after\n"
    with FfmpegLog() as outer, FfmpegLog() as inner:  # nested: the outer one keeps capturing
        os.write(2, b"nested\n")
    assert (outer.text, inner.text) == ("nested", "")
    assert capfd.readouterr().err == ""


def test_condense_keeps_each_line_once_with_its_count():
    assert condense("a\n\nb\na\na\n") == "a (x3)\nb"
    assert condense("x" * 50, limit=10) == "xxxxxxx..."


def test_merged_entries_and_summary_line(tmp_path):
    merged = write_entries([{"path": "/a", "rank": 0}, {"path": "/a", "rank": 1}], tmp_path / "m.jsonl")
    assert read_entries([merged, tmp_path / "missing.jsonl"]) == [
        {"path": "/a", "rank": 0},
        {"path": "/a", "rank": 1},
    ]
    assert summary_line(0, 0, "runs/x/data_failures/", final=True) == "data: no video failed to decode"
    assert summary_line(2, 3, "runs/x/data_failures/", final=False) == (
        "data: 2 videos failed to decode so far (3 occurrences, all ranks); details: runs/x/data_failures/"
    )
    assert (
        summary_line(1, 1, "d/", final=True)
        == "data: 1 video failed to decode (1 occurrence, all ranks); details: d/"
    )
