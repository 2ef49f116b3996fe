"""Helpers for data tests: tiny real videos written with PyAV (plain, and the hard cases every decoder
backend must get right), broken files, the tiny demo set, the backends to test.

Import fixtures with ``from video_utils import tiny_demo  # noqa: F401`` (pytest puts tests/ on the
path); the demo is generated once per session whichever module asks first.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data_index.videowrite import write_video
from turbo_ds.data.backends.choice import SPEED_ORDER, probe

# The backends that decode on this machine (CI installs what torchcodec needs, so all three there).
BACKENDS = tuple(b for b in SPEED_ORDER if probe(b) is None)
# Every backend as a pytest parameter: one that cannot decode here is skipped, and says why.
BACKEND_PARAMS = [
    pytest.param(b, marks=pytest.mark.skip(reason=f"{b} cannot decode here: {probe(b)}")) if probe(b) else b
    for b in SPEED_ORDER
]

# The exactness cases: name -> write_case_video options. "tol": the mean absolute difference allowed
# from the reference frame (which must also be the nearest one). H.264 decodes bit-exactly in every
# FFmpeg; MPEG-4 Part 2 does not (each backend brings its own FFmpeg, whose IDCTs differ a little and
# drift through a keyframe interval: up to ~3 of 255 seen at odd sizes).
CASES = {
    "bframes": {"w": 64, "h": 48},
    "vfr": {"w": 64, "h": 48, "vfr": True},
    "vfr_mkv": {"w": 64, "h": 48, "vfr": True, "ext": "mkv"},
    "odd_yuv444": {"w": 35, "h": 19, "pix_fmt": "yuv444p"},
    "odd_mpeg4": {"w": 33, "h": 47, "codec": "mpeg4", "bframes": 0, "tol": 5.0},
    "mpeg4_bframes": {"w": 64, "h": 48, "codec": "mpeg4", "tol": 5.0},
    "rotated_90": {"w": 64, "h": 48, "rotation": 90},
    "rotated_270": {"w": 64, "h": 48, "rotation": 270},
}
CASE_FRAMES = 24


def write_case_video(
    path,
    w: int,
    h: int,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    bframes: int = 2,
    gop: int = 8,
    vfr: bool = False,
    rotation: int | None = None,
    n: int = CASE_FRAMES,
    **_,
) -> np.ndarray:
    """``n`` frames (make_frames) with B-frames and a keyframe every ``gop``; ``vfr``: durations of 40,
    80 and 120 ms in turn (time base 1/1000); ``rotation``: a display matrix (degrees, counter-clockwise)."""
    frames = make_frames(n, h, w)
    tb = Fraction(1, 1000) if vfr else Fraction(1, 10)
    pts = np.cumsum([0] + [40 * (1 + i % 3) for i in range(n - 1)]) if vfr else np.arange(n)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=None if vfr else 10)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.time_base = stream.codec_context.time_base = tb
        if codec == "libx264":
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"
            stream.options = {"crf": "10", "preset": "veryfast", "threads": "1", "x264-params": params}
        else:
            stream.codec_context.gop_size, stream.codec_context.max_b_frames = gop, bframes
            stream.codec_context.bit_rate = 2_000_000
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for f, p in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = int(p), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return frames


def reference_frames(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Every frame in order, decoded sequentially by PyAV without seeking (frame i = the i-th frame out
    of the decoder), as stored (no rotation applied); ``size`` = (w, h) resizes in swscale."""
    kw = {"format": "rgb24"} if size is None else {"format": "rgb24", "width": size[0], "height": size[1]}
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "NONE"  # frame-exact: no frame threading
        return np.stack([f.to_ndarray(**kw) for f in c.decode(stream)])


def make_frames(n: int = 20, h: int = 32, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 frames that differ strongly from one another (a moving bright bar over a
    frame-numbered gray level), so a wrong frame index is visible after lossy coding."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    tint = rng.integers(0, 40, size=3)
    base = np.stack([(xx * 60) // w + tint[0], (yy * 60) // h + tint[1], 0 * xx + tint[2]], -1).astype(
        np.uint8
    )
    for i in range(n):
        f = base.copy()
        f[..., 1] += np.uint8((i * 180) // max(1, n - 1))
        x = (i * 3) % (w - 8)
        f[:, x : x + 8, :] = 255
        frames[i] = f
    return frames


def write_test_video(
    path, n: int = 20, h: int = 32, w: int = 64, fps: float = 10.0, gop: int = 5, seed: int = 0
):
    frames = make_frames(n, h, w, seed)
    write_video(path, frames, fps, gop=gop, crf=10)
    return frames


def write_broken(dirpath: Path) -> dict[str, str]:
    """Broken files of each kind -> {relative path: expected reason prefix}."""
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "zero.mp4").write_bytes(b"")
    (dirpath / "text.mp4").write_text("this is not a video\n" * 50)
    write_test_video(dirpath / "full.mp4", n=20)
    data = (dirpath / "full.mp4").read_bytes()
    (dirpath / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom lost
    (dirpath / "full.mp4").unlink()
    return {
        "zero.mp4": "zero-byte",
        "text.mp4": "unreadable",
        "truncated.mp4": "unreadable",
        "missing.mp4": "missing",
    }


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The tiny demo dataset (seed 0), generated once per test session."""
    from data_index.demo import generate_demo

    out = tmp_path_factory.getbasetemp() / "tiny_demo"
    if not (out / "long.parquet").exists():
        generate_demo(out, seed=0, size="tiny", workers=1)
    return out
