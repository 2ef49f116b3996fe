"""Decode only the sampled frames of a video: decord by default, PyAV as fallback or by choice.

No reader outlives a call (bounded memory over thousands of videos). Frame indices are clamped to the
frames that actually decode: decord's reported count can exceed them, and ``get_batch`` past the end
can hang, so the caller passes the count checked at index-build time (``num_frames`` in the index).
What FFmpeg prints meanwhile is kept off the console (``ffmpeg_log.py``): a failed decode carries it
in ``DecodeError.log``, a successful one drops it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from turbo_ds.data.ffmpeg_log import FfmpegLog

BACKENDS = ("decord", "pyav", "auto")
# Output widths decord 0.6 cannot copy out (its row padding breaks the copy: e.g. 16, 24, 48, 72 px);
# learnt per process so later samples at that width go straight to PyAV.
_DECORD_BAD_WIDTHS: set[int] = set()
# Videos decord failed on and PyAV then decoded, learnt per process (bounded) so that later clips of
# them go straight to PyAV instead of failing in decord first every time.
_PYAV_ONLY: set[str] = set()
_PYAV_ONLY_MAX = 100_000


class DecodeError(RuntimeError):
    """A video that cannot be opened or read; ``reason`` is a short machine-friendly tag, ``log`` what
    the decoders printed while trying (set by :func:`decode_frames`)."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        self.log = ""
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class VideoMeta:
    num_frames: int  # frames that decode
    fps: float
    duration_s: float
    width: int
    height: int


def check_file(path: str) -> None:
    """Cheap checks before handing a file to a decoder (which may crash or hang on garbage)."""
    if not os.path.exists(path):
        raise DecodeError(path, "missing")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "zero-byte")


def _frame_index(pts: int | None, time_base: Fraction, start: float, fps: float) -> int:
    t = float((pts or 0) * time_base) - start
    return int(round(t * fps))


def _safe_decode(container, stream):
    """Decoded frames until the end or the first decoding error (a truncated or corrupt tail)."""
    import av

    it = container.decode(stream)
    while True:
        try:
            frame = next(it)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return
        yield frame


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
            for frame in _safe_decode(container, stream):
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


def _clamp(indices: np.ndarray, num_frames: int) -> np.ndarray:
    return np.clip(np.asarray(indices, dtype=np.int64), 0, max(0, num_frames - 1))


def decode_decord(path: str, indices, num_frames: int | None = None, size: tuple[int, int] | None = None):
    """(T, H, W, 3) uint8 with decord; ``size`` = (w, h) decodes at reduced size."""
    import decord

    check_file(path)
    kwargs = {"num_threads": 1, "ctx": decord.cpu(0)}
    if size is not None:
        kwargs.update(width=int(size[0]), height=int(size[1]))
    try:
        vr = decord.VideoReader(path, **kwargs)
    except Exception as e:
        raise DecodeError(path, "unreadable", f"decord: {e}") from e
    try:
        n = len(vr) if num_frames is None else min(len(vr), int(num_frames))
        if n <= 0:
            raise DecodeError(path, "no-frames")
        idx = _clamp(indices, n)
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = vr.get_batch(uniq.tolist()).asnumpy()
        return frames[inverse]
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(path, "read-failed", f"decord: {e}") from e
    finally:
        del vr


def decode_pyav(path: str, indices, num_frames: int | None = None, size: tuple[int, int] | None = None):
    """(T, H, W, 3) uint8 with PyAV: seeks to the keyframe before the first wanted frame, decodes
    forward, re-seeks across long gaps, and converts (and resizes, in swscale) only wanted frames."""
    import av

    check_file(path)
    idx = np.asarray(indices, dtype=np.int64)
    try:
        container = av.open(path)
    except Exception as e:
        raise DecodeError(path, "unreadable", f"pyav: {e}") from e
    try:
        if not container.streams.video:
            raise DecodeError(path, "no-video-stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        n = int(num_frames) if num_frames else (stream.frames or 1 << 30)
        idx = _clamp(idx, n)
        wanted = np.unique(idx)
        got: dict[int, np.ndarray] = {}
        kw = {"format": "rgb24"}
        if size is not None:
            kw.update(width=int(size[0]), height=int(size[1]))
        gap_reseek = max(int(2 * fps), 32)
        last = -1
        pos = 0
        while pos < len(wanted):
            target = int(wanted[pos])
            if last < 0 or target - last > gap_reseek:
                ts = int((start + target / fps) / tb)
                container.seek(max(ts, 0), stream=stream, backward=True, any_frame=False)
            progressed = found_since_seek = False
            for frame in _safe_decode(container, stream):
                fi = _frame_index(frame.pts, tb, start, fps)
                last = fi
                progressed = True
                if wanted[pos] <= fi:  # a missing timestamp (VFR) takes the next decoded frame
                    arr = frame.to_ndarray(**kw)
                    while pos < len(wanted) and wanted[pos] <= fi:
                        got[int(wanted[pos])] = arr
                        pos += 1
                    found_since_seek = True
                if pos >= len(wanted) or (found_since_seek and wanted[pos] - fi > gap_reseek):
                    break
            else:
                break  # end of stream
            if not progressed:
                break
        if not got:
            raise DecodeError(path, "no-frames")
        missing = [int(w) for w in wanted if int(w) not in got]
        if missing:  # past the real end: repeat the last decoded frame
            last_frame = got[max(got)]
            for m in missing:
                got[m] = got.get(max([k for k in got if k <= m], default=max(got)), last_frame)
        return np.stack([got[int(i)] for i in idx])
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(path, "read-failed", f"pyav: {type(e).__name__}: {e}") from e
    finally:
        container.close()


def decode_frames(
    path: str,
    indices,
    *,
    backend: str = "decord",
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    fallback: bool = True,
) -> tuple[np.ndarray, str]:
    """Decode ``indices`` of ``path`` as (T, H, W, 3) uint8; returns (frames, backend used).

    ``backend``: "decord" (default; falls back to PyAV when decord fails and ``fallback``), "pyav",
    or "auto" (same as decord with fallback). ``num_frames``: the decodable count (indices are
    clamped to it). ``size``: (w, h) to decode at, resized by the backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoder backend {backend!r}; choose from {BACKENDS}")
    log = FfmpegLog()
    try:
        with log:
            return _decode_with_fallback(path, indices, backend, num_frames, size, fallback)
    except DecodeError as e:
        e.log = log.text
        raise


def _decode_with_fallback(path, indices, backend, num_frames, size, fallback) -> tuple[np.ndarray, str]:
    bad_width = size is not None and size[0] in _DECORD_BAD_WIDTHS
    if backend == "pyav" or (fallback and (bad_width or path in _PYAV_ONLY)):
        return decode_pyav(path, indices, num_frames, size), "pyav"
    try:
        return decode_decord(path, indices, num_frames, size), "decord"
    except DecodeError as e:
        if e.reason in ("missing", "zero-byte") or not (fallback or backend == "auto"):
            raise
        if size is not None and "size must exactly match" in e.detail:
            _DECORD_BAD_WIDTHS.add(size[0])
        try:
            frames = decode_pyav(path, indices, num_frames, size)
        except DecodeError as e2:
            raise DecodeError(path, e2.reason, f"{e.detail}; {e2.detail}") from e2
        if len(_PYAV_ONLY) < _PYAV_ONLY_MAX:
            _PYAV_ONLY.add(path)
        return frames, "pyav"
