"""Decode only the sampled frames of a video with the backend the run chose (``backends/choice.py``:
torchcodec, PyAV or decord), falling back to PyAV per video where a fast backend fails.

A backend takes (path, frame indices, size) and returns exactly those frames, as stored (rotation
metadata is not applied: docs/decoding.md), or raises :class:`DecodeError`; a video is a DecodeError
only when no backend decodes it. No reader outlives a call (bounded memory over thousands of videos).
Frame indices are clamped to the frames that actually decode: the caller passes the count checked at
index-build time (``num_frames`` in the index). What FFmpeg prints meanwhile is kept off the console
(``ffmpeg_log.py``): a failed decode carries it in ``DecodeError.log``, a successful one drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from turbo_ds.data.backends.choice import BACKENDS, resolve
from turbo_ds.data.backends.common import DecodeError, check_file
from turbo_ds.data.backends.decord_decoder import decode_decord
from turbo_ds.data.backends.pyav_decoder import decode_pyav, decoded_frames
from turbo_ds.data.backends.torchcodec_decoder import decode_torchcodec
from turbo_ds.data.ffmpeg_log import FfmpegLog

__all__ = [
    "BACKENDS",
    "DecodeError",
    "VideoMeta",
    "check_file",
    "decode_frames",
    "probe_video",
    "scaled_size",
]

DECODERS = {"torchcodec": decode_torchcodec, "decord": decode_decord, "pyav": decode_pyav}
# Videos a fast backend failed on and PyAV then decoded, learnt per process (bounded) so that later
# clips of them go straight to PyAV instead of failing in the fast backend first every time.
_PYAV_ONLY: set[str] = set()
_PYAV_ONLY_MAX = 100_000


@dataclass
class VideoMeta:
    num_frames: int  # frames that decode
    fps: float
    duration_s: float
    width: int
    height: int


def _frame_index(pts: int | None, time_base: Fraction, start: float, fps: float) -> int:
    t = float((pts or 0) * time_base) - start
    return int(round(t * fps))


def probe_video(path: str, exact: bool = True) -> VideoMeta:
    """Metadata with PyAV. With ``exact``, the frame count is checked by demuxing every packet and
    decoding the last GOP, so it counts frames that really decode (a truncated file counts less)."""
    import av

    check_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError(path, "no-video-stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            width, height = stream.codec_context.width, stream.codec_context.height
            tb = stream.time_base
            start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
            reported = stream.frames
            if not exact:
                dur = float(stream.duration * tb) if stream.duration else float(container.duration or 0) / 1e6
                n = reported or int(round(dur * fps))
                return VideoMeta(n, fps, n / fps, width, height)
            n_packets, last_key_pts, packets_before_last_key = 0, None, 0
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 or packet.pts is None and packet.dts is None:
                        continue
                    if packet.is_keyframe:
                        last_key_pts, packets_before_last_key = packet.pts, n_packets
                    n_packets += 1
            except av.error.FFmpegError:
                pass  # truncated: count what demuxes
            if n_packets == 0 or last_key_pts is None:
                raise DecodeError(path, "no-frames")
            container.seek(last_key_pts, stream=stream, backward=True, any_frame=False)
            tail = 0
            last_idx = -1
            for frame in decoded_frames(container, stream):
                tail += 1
                last_idx = max(last_idx, _frame_index(frame.pts, tb, start, fps))
            n = min(n_packets, packets_before_last_key + tail)
            if last_idx >= 0:
                n = min(n, last_idx + 1)
            if n <= 0:
                raise DecodeError(path, "no-frames")
            return VideoMeta(int(n), fps, n / fps, int(width), int(height))
    except DecodeError:
        raise
    except Exception as e:  # av.error.* and friends
        raise DecodeError(path, "unreadable", f"{type(e).__name__}: {e}") from e


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(w, h) with the short side at ``short_side`` (even numbers, aspect kept); unchanged if None."""
    if not short_side or min(width, height) <= 0:
        return width, height
    s = short_side / min(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def decode_frames(
    path: str,
    indices,
    *,
    backend: str = "auto",
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    fallback: bool = True,
    device: str = "cpu",
):
    """Decode ``indices`` of ``path`` as (T, H, W, 3) uint8; returns (frames, backend used).

    ``backend``: "torchcodec", "decord" or "pyav", or "auto" (the fastest that works here, always with
    fallback); with ``fallback``, a video the fast backend fails on is decoded by PyAV. ``num_frames``:
    the decodable count (indices are clamped to it). ``size``: (w, h) to decode at, resized by the
    backend. ``device``: "cpu" (numpy frames) or a CUDA device (torchcodec; a torch tensor there).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoder backend {backend!r}; choose from {BACKENDS}")
    if device != "cpu" and backend not in ("auto", "torchcodec"):
        raise ValueError(f"decoding on {device} is torchcodec's: backend {backend!r} decodes on the CPU")
    if backend == "auto":
        backend, fallback = resolve("auto", "cpu" if device == "cpu" else "cuda").backend, True
    log = FfmpegLog()
    try:
        with log:
            return _decode_with_fallback(path, indices, backend, num_frames, size, fallback, device)
    except DecodeError as e:
        e.log = log.text
        raise


def _decode_with_fallback(path, indices, backend, num_frames, size, fallback, device):
    on_gpu = device != "cpu"
    if backend != "pyav" and not (fallback and path in _PYAV_ONLY):
        try:
            kwargs = {"device": device} if on_gpu else {}
            return DECODERS[backend](path, indices, num_frames, size, **kwargs), backend
        except DecodeError as e:
            if e.reason in ("missing", "zero-byte") or not fallback:
                raise
            first = e
        try:
            frames = DECODERS["pyav"](path, indices, num_frames, size)
        except DecodeError as e2:
            raise DecodeError(path, e2.reason, f"{first.detail}; {e2.detail}") from e2
        if len(_PYAV_ONLY) < _PYAV_ONLY_MAX:
            _PYAV_ONLY.add(path)
    else:
        frames = DECODERS["pyav"](path, indices, num_frames, size)
    if on_gpu:  # the PyAV fallback decodes on the CPU
        import torch

        frames = torch.from_numpy(frames).to(device)
    return frames, "pyav"
