"""Decoding: both backends give the same frames, indices clamped, broken files named, memory bounded."""

import gc
import os

import numpy as np
import psutil
import pytest
from video_utils import BACKENDS, write_broken, write_test_video

from turbo_ds.data import decode as dec
from turbo_ds.data.decode import DecodeError, decode_frames, probe_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("dec") / "v.mp4"
    frames = write_test_video(path, n=30, h=32, w=64, fps=10, gop=8)
    return str(path), frames


def test_probe_counts_frames(video):
    path, frames = video
    m = probe_video(path)
    assert (m.num_frames, m.width, m.height) == (30, 64, 32)
    assert m.fps == pytest.approx(10.0) and m.duration_s == pytest.approx(3.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_decodes_requested_frames(video, backend):
    path, frames = video
    idx = [0, 3, 4, 17, 17, 29, 11]  # unsorted, repeated, crossing keyframes
    out, used = decode_frames(path, idx, backend=backend, num_frames=30)
    assert used == backend and out.shape == (len(idx), 32, 64, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - frames[idx].astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 6, err  # the right frame, within codec tolerance
    wrong = np.abs(out[1:2].astype(int) - frames[[20]].astype(int)).mean()
    assert wrong > 3 * err.max() + 5  # frames differ enough that a wrong index would show


def test_backends_agree(video):
    path, _ = video
    idx = list(range(0, 30, 2))
    a, _ = decode_frames(path, idx, backend="decord", num_frames=30)
    b, _ = decode_frames(path, idx, backend="pyav", num_frames=30)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_at_reduced_size(video, backend):
    path, frames = video
    out, used = decode_frames(path, [5, 6], backend=backend, num_frames=30, size=(32, 16), fallback=False)
    assert out.shape == (2, 16, 32, 3) and used == backend
    small = frames[[5, 6]].reshape(2, 16, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(out.astype(float) - small).mean() < 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_clamped_to_decodable_frames(video, backend, monkeypatch):
    path, frames = video
    asked = []
    if backend == "decord":
        import decord

        real = decord.VideoReader

        class Spy(real):
            def get_batch(self, indices):
                asked.extend(indices)
                return super().get_batch(indices)

        monkeypatch.setattr(decord, "VideoReader", Spy)
    # the index says 20 decodable frames (decord would report 30): nothing past 19 is read
    out, _ = decode_frames(path, [0, 19, 25, 500], backend=backend, num_frames=20)
    assert out.shape[0] == 4
    assert np.abs(out[2].astype(int) - frames[19].astype(int)).mean() < 6
    assert np.array_equal(out[2], out[3]) and np.array_equal(out[1], out[2])
    if backend == "decord":
        assert asked and max(asked) <= 19


def test_truncated_file_counts_only_decodable_frames(tmp_path):
    import av

    path = tmp_path / "fast.mp4"  # moov first: the header promises 40 frames, half the data is gone
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3)).astype(np.uint8)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"g": "5"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    m = probe_video(str(cut))
    assert 0 < m.num_frames < 40
    out, used = decode_frames(
        str(cut), list(range(0, 40, 5)), num_frames=m.num_frames
    )  # decord fails -> PyAV
    assert out.shape == (8, 32, 32, 3) and used in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_files_raise_with_reason(tmp_path, backend):
    expected = write_broken(tmp_path)
    undecodable = ("unreadable", "read-failed", "no-frames")
    for name, reason in expected.items():
        with pytest.raises(DecodeError) as ei:
            decode_frames(str(tmp_path / name), [0, 1], backend=backend)
        assert ei.value.reason in (undecodable if reason == "unreadable" else (reason,)), name
        assert name in str(ei.value)
        with pytest.raises(DecodeError) as ei:
            probe_video(str(tmp_path / name))
        assert ei.value.reason in (undecodable if reason == "unreadable" else (reason,)), name


def test_decord_bad_width_falls_back_to_pyav(tmp_path):
    path = tmp_path / "w48.mp4"
    frames = write_test_video(path, n=10, h=32, w=48)  # decord 0.6 cannot copy out 48-px-wide frames
    out, used = decode_frames(str(path), [2, 7], num_frames=10)
    assert used == "pyav"
    assert np.abs(out.astype(int) - frames[[2, 7]].astype(int)).mean() < 6


def test_decord_failure_falls_back_to_pyav_and_is_remembered(video, monkeypatch):
    path, _ = video
    decord_calls = []

    def boom(*a, **k):
        decord_calls.append(a[0])
        raise DecodeError(path, "read-failed", "simulated")

    monkeypatch.setattr(dec, "decode_decord", boom)
    monkeypatch.setattr(dec, "_PYAV_ONLY", set())  # this process's memo, empty for the test
    out, used = decode_frames(path, [1, 2], backend="decord", num_frames=30)
    assert used == "pyav" and out.shape[0] == 2 and decord_calls == [path]
    # The next clip of that video goes straight to PyAV: decord is not tried again.
    out, used = decode_frames(path, [5, 9, 11], backend="decord", num_frames=30)
    assert used == "pyav" and out.shape[0] == 3 and decord_calls == [path]
    with pytest.raises(DecodeError):  # no fallback asked for: decord, as told
        decode_frames(path, [1, 2], backend="decord", num_frames=30, fallback=False)
    assert decord_calls == [path, path]


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_bounded_over_many_videos(tmp_path, backend):
    paths = []
    for i in range(40):
        p = tmp_path / f"v{i}.mp4"
        write_test_video(p, n=12, h=32, w=32, seed=i)
        paths.append(str(p))
    proc = psutil.Process(os.getpid())

    def run(k):
        for j in range(k):
            decode_frames(paths[j % len(paths)], [0, 5, 11], backend=backend, num_frames=12)

    run(100)  # warm up allocators and codec tables
    gc.collect()
    before = proc.memory_info().rss
    run(600)
    gc.collect()
    growth_mb = (proc.memory_info().rss - before) / 2**20
    assert growth_mb < 25, f"RSS grew {growth_mb:.1f} MiB over 600 decodes: a reader is kept alive"
