"""Decoding: every backend returns exactly the frames a sequential PyAV decode gives (B-frames, variable
frame rate, odd sizes, rotation), indices clamped, broken files named, memory bounded; how ``auto``
chooses, and what an explicit backend that cannot decode says."""

import gc
import os
import sys

import numpy as np
import psutil
import pytest
import torch
from video_utils import (
    BACKEND_PARAMS,
    BACKENDS,
    CASES,
    reference_frames,
    write_broken,
    write_case_video,
    write_test_video,
)

from turbo_ds.config import ConfigError
from turbo_ds.data import decode as dec
from turbo_ds.data.backends import choice, pyav_decoder
from turbo_ds.data.backends.choice import SPEED_ORDER, resolve
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


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backend_decodes_requested_frames(video, backend):
    path, frames = video
    idx = [0, 3, 4, 17, 17, 29, 11]  # unsorted, repeated, crossing keyframes
    out, used = decode_frames(path, idx, backend=backend, num_frames=30, fallback=False)
    assert used == backend and out.shape == (len(idx), 32, 64, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - frames[idx].astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 6, err  # the right frame, within codec tolerance
    wrong = np.abs(out[1:2].astype(int) - frames[[20]].astype(int)).mean()
    assert wrong > 3 * err.max() + 5  # frames differ enough that a wrong index would show


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (path, reference frames) for every exactness case."""
    root = tmp_path_factory.mktemp("cases")
    out = {}
    for name, opts in CASES.items():
        path = root / f"{name}.{opts.get('ext', 'mp4')}"
        write_case_video(path, **opts)
        out[name] = (str(path), reference_frames(path))
    return out


def assert_same_frames(out: np.ndarray, ref: np.ndarray, idx, tol: float, what: str) -> None:
    """Each output frame is closest to the reference frame it should be, and within ``tol`` of it."""
    assert out.shape == (len(idx), *ref.shape[1:]), what
    dist = np.abs(out[:, None].astype(np.int16) - ref[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert dist.argmin(axis=1).tolist() == list(idx), f"{what}: wrong frames"
    assert dist[np.arange(len(idx)), idx].max() <= tol, f"{what}: {dist[np.arange(len(idx)), idx]}"


# decord's limits, each either made exact by the PyAV fallback or documented here (docs/decoding.md).
FALLS_BACK = {("decord", "rotated_90"), ("decord", "rotated_270")}  # decord raises: PyAV decodes it
WRONG = {
    ("decord", "mpeg4_bframes"): "decord (0.6, and decord2 3.4) returns wrong frames, silently, on "
    "random access into MPEG-4 Part 2 streams with B-frames (its seeks land a frame or two off); "
    "sequential reads are right. Nothing raises, so no fallback can catch it"
}
EXACT_IDX = [0, 3, 4, 9, 17, 17, 23, 11, 1]  # unsorted, repeated, crossing keyframes, the last frame


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backend_returns_the_reference_frames(cases, backend, case, request):
    if (backend, case) in WRONG:
        request.applymarker(pytest.mark.xfail(reason=WRONG[backend, case], strict=True))
    path, ref = cases[case]
    out, used = decode_frames(path, EXACT_IDX, backend=backend, num_frames=len(ref))
    assert used == ("pyav" if (backend, case) in FALLS_BACK else backend)
    assert_same_frames(out, ref, EXACT_IDX, CASES[case].get("tol", 0.5), f"{backend} on {case}")


@pytest.mark.parametrize("case", ["bframes", "vfr", "rotated_90", "odd_yuv444"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backend_at_reduced_size_matches_the_reference(cases, backend, case):
    path, ref = cases[case]
    h, w = ref.shape[1:3]
    size = (w // 2 + w % 2, h // 2 + h % 2) if backend != "decord" else (32, 24)  # decord: 32-px rows
    small = reference_frames(path, size)
    out, _ = decode_frames(path, EXACT_IDX, backend=backend, num_frames=len(ref), size=size)
    assert_same_frames(out, small, EXACT_IDX, 6.0, f"{backend} on {case} at {size}")  # other scalers


@pytest.mark.parametrize("case", ["bframes", "vfr_mkv"])
def test_pyav_dense_frames_decode_in_one_pass_with_the_same_result(cases, case, monkeypatch):
    path, ref = cases[case]
    runs = []
    real = pyav_decoder._decode_run
    monkeypatch.setattr(pyav_decoder, "_decode_run", lambda *a: (runs.append(a[4]), real(*a)))
    dense = np.linspace(0, 23, 12).round().astype(int)  # 12 frames over 3 keyframe intervals
    sparse = np.array(
        [1, 20]
    )  # 14 frames from frame 1 to frame 20's keyframe (16): a seek beats decoding them
    for idx, passes in ((dense, 1), (sparse, 2)):
        runs.clear()
        auto = pyav_decoder.decode_pyav(path, idx, len(ref))
        assert len(runs) == passes
        forced = [pyav_decoder.decode_pyav(path, idx, len(ref), sequential=s) for s in (True, False)]
        assert np.array_equal(auto, forced[0]) and np.array_equal(auto, forced[1])
        assert np.array_equal(auto, ref[idx])


@pytest.mark.parametrize("case", ["bframes", "vfr", "vfr_mkv"])
def test_pyav_scans_only_up_to_the_wanted_frames(cases, case, monkeypatch):
    path, ref = cases[case]
    monkeypatch.setattr(pyav_decoder, "SCAN_MARGIN", 3)  # > the 2 B-frames these videos reorder
    scanned = []
    real = pyav_decoder.frame_table
    monkeypatch.setattr(pyav_decoder, "frame_table", lambda *a: (r := real(*a), scanned.append(len(r[0])))[0])
    idx = [2, 9, 5, 9, 0]
    out = pyav_decoder.decode_pyav(path, idx, len(ref))
    assert scanned == [9 + 1 + 3] and np.array_equal(out, ref[idx])
    out = pyav_decoder.decode_pyav(path, [23, 22], None)  # count unknown: every packet
    assert scanned[-1] == len(ref) and np.array_equal(out, ref[[23, 22]])


def test_runs_decode_through_small_gaps_and_seek_over_large_ones():
    from turbo_ds.data.backends.pyav_decoder import SEEK_FRAMES, seek_runs

    keyframes = np.arange(0, 1000, 10)
    dense = np.arange(0, 100, 5)  # 2 wanted frames per keyframe interval: one pass
    assert [(k, w.tolist()) for k, w in seek_runs(dense, keyframes, None)] == [(0, dense.tolist())]
    # four clips far apart (caption clips of one video, decoded together): a seek each
    clips = np.concatenate([np.arange(s, s + 4) for s in (100, 400, 700, 950)])
    assert [k for k, _ in seek_runs(clips, keyframes, None)] == [100, 400, 700, 950]
    # one frame per interval, each right before the next keyframe: a gap of 0, decoded through
    assert len(seek_runs(np.arange(9, 100, 10), keyframes, None)) == 1
    # a gap just over SEEK_FRAMES frames to the next keyframe: a seek
    assert [k for k, _ in seek_runs(np.array([0, 30]), np.array([0, 10, 20, 30]), None)] == [0, 30]
    assert SEEK_FRAMES < 29
    assert len(seek_runs(clips, keyframes, True)) == 1 and len(seek_runs(dense, keyframes, False)) == 10


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_decode_at_reduced_size(video, backend):
    path, frames = video
    out, used = decode_frames(path, [5, 6], backend=backend, num_frames=30, size=(32, 16), fallback=False)
    assert out.shape == (2, 16, 32, 3) and used == backend
    small = frames[[5, 6]].reshape(2, 16, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(out.astype(float) - small).mean() < 20


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
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
    out, _ = decode_frames(path, [0, 19, 25, 500], backend=backend, num_frames=20, fallback=False)
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
    for backend in BACKENDS:  # decord fails to open it -> PyAV
        out, used = decode_frames(str(cut), list(range(0, 40, 5)), backend=backend, num_frames=m.num_frames)
        assert out.shape == (8, 32, 32, 3) and used in BACKENDS


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_broken_files_raise_with_reason(tmp_path, backend):
    expected = write_broken(tmp_path)
    undecodable = ("unreadable", "read-failed", "no-frames")
    for name, reason in expected.items():
        for fallback in (False, True):  # the backend alone, and with PyAV behind it
            with pytest.raises(DecodeError) as ei:
                decode_frames(str(tmp_path / name), [0, 1], backend=backend, fallback=fallback)
            assert ei.value.reason in (undecodable if reason == "unreadable" else (reason,)), name
            assert name in str(ei.value)
        with pytest.raises(DecodeError) as ei:
            probe_video(str(tmp_path / name))
        assert ei.value.reason in (undecodable if reason == "unreadable" else (reason,)), name


def test_decord_bad_width_falls_back_to_pyav(tmp_path):
    path = tmp_path / "w48.mp4"
    frames = write_test_video(path, n=10, h=32, w=48)  # decord 0.6 cannot copy out 48-px-wide frames
    out, used = decode_frames(str(path), [2, 7], backend="decord", num_frames=10)
    assert used == "pyav"
    assert np.abs(out.astype(int) - frames[[2, 7]].astype(int)).mean() < 6


@pytest.mark.parametrize("backend", ["torchcodec", "decord"])
def test_fast_backend_failure_falls_back_to_pyav_and_is_remembered(video, monkeypatch, backend):
    path, _ = video
    calls = []

    def boom(*a, **k):
        calls.append(a[0])
        raise DecodeError(path, "read-failed", "simulated")

    monkeypatch.setitem(dec.DECODERS, backend, boom)
    monkeypatch.setattr(dec, "_PYAV_ONLY", set())  # this process's memo, empty for the test
    out, used = decode_frames(path, [1, 2], backend=backend, num_frames=30)
    assert used == "pyav" and out.shape[0] == 2 and calls == [path]
    # The next clip of that video goes straight to PyAV: the fast backend is not tried again.
    out, used = decode_frames(path, [5, 9, 11], backend=backend, num_frames=30)
    assert used == "pyav" and out.shape[0] == 3 and calls == [path]
    with pytest.raises(DecodeError):  # no fallback asked for: the backend, as told
        decode_frames(path, [1, 2], backend=backend, num_frames=30, fallback=False)
    assert calls == [path, path]


def test_auto_takes_the_fastest_backend_that_decodes(video, monkeypatch):
    assert resolve("auto").backend == BACKENDS[0] and BACKENDS[0] == SPEED_ORDER[0]
    fastest = SPEED_ORDER[0]
    monkeypatch.setattr(choice, "_probed", {(fastest, "cpu"): "ImportError: simulated"})
    picked = resolve("auto")
    assert picked.backend == next(b for b in SPEED_ORDER[1:] if b in BACKENDS)
    assert picked.line().startswith(f"data: decoder backend {picked.backend} (auto: ")
    assert f"{fastest}: ImportError: simulated" in picked.line()
    assert decode_frames(video[0], [1, 2], backend="auto", num_frames=30)[1] == picked.backend
    assert choice.probe("pyav") is None  # a real probe: PyAV decodes the probe clip


def test_explicit_backend_that_cannot_decode_is_one_config_error(monkeypatch):
    monkeypatch.setattr(choice, "_probed", {})
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    with pytest.raises(ConfigError) as ei:
        resolve("torchcodec")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("data.backend=torchcodec: torchcodec cannot decode here")
    for needed in (
        "apt-get install ffmpeg",
        "FFmpeg 4-8",
        f"torch {'.'.join(torch.__version__.split('.')[:2])}",
    ):
        assert needed in msg, msg
    with pytest.raises(ConfigError, match="choose from auto, torchcodec, decord, pyav"):
        resolve("opencv")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_decoding_without_a_gpu_is_one_config_error():
    with pytest.raises(ConfigError, match="data.decode_device=cuda: torch sees no CUDA GPU here"):
        resolve("auto", "cuda")
    with pytest.raises(ConfigError, match="set data.backend to auto or torchcodec"):
        resolve("decord", "cuda")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
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


@pytest.mark.parametrize("case", ["bframes", "mpeg4_bframes"])
def test_pyav_skips_the_non_reference_frames_it_does_not_want(cases, case):
    """Non-reference frames that are not wanted are not decoded (H.264 non-reference B-frames, MPEG-4
    Part 2 B-frames); every wanted frame is still the reference's, reference frames among them."""
    import av

    path, ref = cases[case]
    with av.open(path) as container:
        stream = container.streams.video[0]
        pts, _, _ = pyav_decoder.frame_table(container, stream)
        container.seek(0, stream=stream)
        everything = [f.pts for f in pyav_decoder.decoded_frames(container, stream)]
        want = [0, 5, 9, 10, 17, 23]
        container.seek(0, stream=stream)
        some = [f.pts for f in pyav_decoder.decoded_frames(container, stream, {int(pts[i]) for i in want})]
    assert everything == sorted(pts.tolist())
    assert set(pts[want].tolist()) <= set(some) and len(some) < len(everything)  # skipped some
    assert np.array_equal(pyav_decoder.decode_pyav(path, want, len(ref)), ref[want])  # same decoder: exact
