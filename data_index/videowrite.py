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
