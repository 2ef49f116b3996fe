"""Write videos with PyAV (used by the demo generator, `transcode`, and the tests)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    *,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
    bit_rate: int | None = None,
) -> None:
    """Encode (H, W, 3) uint8 frames (even H and W for yuv420p) to ``path`` (mp4/mkv/...)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as out:
        stream = None
        for i, frame in enumerate(frames):
            if stream is None:
                h, w = frame.shape[:2]
                stream = out.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                opts = {}
                if codec in ("libx264", "libx265"):
                    opts = {"crf": str(crf), "preset": preset, "threads": "1"}
                    if gop:
                        opts["x264-params" if codec == "libx264" else "x265-params"] = (
                            f"keyint={gop}:min-keyint={gop}:scenecut=0"
                        )
                if gop:
                    stream.codec_context.gop_size = gop
                if bit_rate:
                    stream.bit_rate = bit_rate
                stream.options = opts
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts, video_frame.time_base = i, 1 / rate
            for packet in stream.encode(video_frame):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)


def synthetic_frames(w: int, h: int, n: int, seed: int):
    """(h, w, 3) uint8 frames of a textured scene panning slowly with a moving bright box: compresses
    like real footage, not noise (the benchmarks' videos)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // 16 + 6, w // 16 + 6, 3), dtype=np.uint8)
    tex = np.kron(coarse, np.ones((16, 16, 1), np.uint8))[: h + 64, : w + 64]
    fine = rng.integers(0, 40, (h + 64, w + 64, 3), dtype=np.uint8)
    tex = (tex // 2 + fine).astype(np.uint8)
    for i in range(n):
        f = tex[(i // 2) % 64 : (i // 2) % 64 + h, i % 64 : i % 64 + w].copy()
        x = (i * 7) % max(1, w - 80)
        f[h // 3 : h // 3 + 60, x : x + 80] = 240
        yield f
