"""PyAV backend: frame-exact on any stream (B-frames, variable frame rate, edit lists), the fallback
for files the fast backends fail on and the reference the others are tested against.

Frame i is the i-th frame in presentation order. One demux pass (packets only, nothing decoded) lists
every frame's pts and where the keyframes are; frames are then found by pts, never by pts / fps (wrong
on variable frame rate). The pass stops :data:`SCAN_MARGIN` packets past the last wanted frame when
the caller knows the frame count, so a short clip near the start of a long video reads little of it. Sparse frames: a seek to each wanted frame's keyframe when it lies past the
current one, except across a gap of a few frames, which is decoded through (dense frames, e.g.
uniform sampling of hundreds of frames over a short-GOP video: one sequential pass). Frames on the way
that are neither wanted nor referenced by others are not decoded at all (``decoded_frames``). Only
wanted frames are converted (and resized, in swscale).
"""

from __future__ import annotations

import numpy as np

from turbo_ds.data.backends.common import DecodeError, check_file, clamp


def decoded_frames(container, stream, wanted_pts: set[int] | None = None):
    """Decoded frames until the end or the first decoding error (a truncated or corrupt tail); with
    ``wanted_pts``, frames that are neither wanted nor referenced by other frames are not decoded.

    Before each packet the decoder is told to discard it if it is a non-reference frame (FFmpeg's
    ``skip_frame = NONREF``: H.264/HEVC ``nal_ref_idc == 0`` pictures, MPEG-4 Part 2 B-frames) unless its
    pts is wanted. No other frame depends on a non-reference frame, so every frame still decodes to
    the same pixels; on web H.264 (B-frames, most of them non-reference) that is about half the frames
    of a keyframe interval. Setting it per packet is sound because the decoder decides when it parses
    that packet (no frame threading: PyAV's default is slice threading)."""
    import av

    codec = stream.codec_context
    try:
        for packet in container.demux(stream):
            p = pts_of(packet)
            wanted = wanted_pts is None or p is None or p in wanted_pts
            codec.skip_frame = "DEFAULT" if wanted else "NONREF"
            yield from codec.decode(packet)  # the empty flush packet at the end drains the decoder
    except av.error.FFmpegError:
        return
    finally:
        codec.skip_frame = "DEFAULT"


# Packets demuxed past the last wanted frame before the frame order counts as settled: decoders reorder
# frames by at most 16 (H.264/HEVC's limit), so the first frames' order is final well before 64 more.
SCAN_MARGIN = 64


def pts_of(obj) -> int | None:
    return obj.pts if obj.pts is not None else obj.dts


def frame_table(container, stream, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(pts of the frames, in presentation order; frame numbers of the keyframes; whether every packet
    was read), from the first ``limit`` packets (None: all)."""
    import av

    pts, key = [], []
    complete = True
    try:
        for packet in container.demux(stream):
            p = pts_of(packet)
            if p is None or packet.size == 0 or packet.is_discard:
                continue
            pts.append(p)
            key.append(packet.is_keyframe)
            if limit is not None and len(pts) >= limit:
                complete = False
                break
    except av.error.FFmpegError:
        pass  # truncated: what demuxes
    pts_arr = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts_arr, kind="stable")
    keyframes = np.flatnonzero(np.asarray(key, dtype=bool)[order]) if key else np.zeros(0, np.int64)
    return pts_arr[order], keyframes, complete


# A seek (and the decoder flush after it) costs about as much as decoding a few frames (~4 at 256p,
# measured): decoding on across a gap of at most this many frames beats seeking over it.
SEEK_FRAMES = 8


def keyframe_before(wanted: np.ndarray, keyframes: np.ndarray) -> np.ndarray:
    """The keyframe each wanted frame is decoded from (the stream start counts as one)."""
    if len(keyframes) == 0 or keyframes[0] != 0:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    return keyframes[np.searchsorted(keyframes, wanted, side="right") - 1]


def seek_runs(
    wanted: np.ndarray, keyframes: np.ndarray, sequential: bool | None
) -> list[tuple[int, np.ndarray]]:
    """(keyframe to seek to, the wanted frames decoded from there): one run per keyframe interval that
    holds wanted frames; None merges a run into the one before when decoding on from that run's last
    frame to the next keyframe skips at most ``SEEK_FRAMES`` frames (dense frames, e.g. hundreds
    sampled uniformly over a short-GOP video, become one pass; clips far apart keep their seeks).
    True: one run; False: never merged."""
    start = keyframe_before(wanted, keyframes)
    if sequential:
        return [(int(start[0]), wanted)]
    cuts = np.flatnonzero(np.diff(start)) + 1
    runs = [(int(s[0]), w) for s, w in zip(np.split(start, cuts), np.split(wanted, cuts), strict=True)]
    if sequential is False:
        return runs
    merged = runs[:1]
    for key, frames in runs[1:]:
        first, previous = merged[-1]
        if key - int(previous[-1]) - 1 <= SEEK_FRAMES:
            merged[-1] = (first, np.concatenate([previous, frames]))
        else:
            merged.append((key, frames))
    return merged


def decode_pyav(
    path: str,
    indices,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    sequential: bool | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8; ``size`` = (w, h) to resize to; ``sequential`` forces one pass (True) or a
    seek per keyframe interval (False) instead of choosing per gap (None, see ``seek_runs``)."""
    import av

    check_file(path)
    try:
        container = av.open(path)
    except Exception as e:
        raise DecodeError(path, "unreadable", f"pyav: {e}") from e
    try:
        if not container.streams.video:
            raise DecodeError(path, "no-video-stream")
        stream = container.streams.video[0]
        limit = None if not num_frames else int(clamp(indices, int(num_frames)).max()) + 1 + SCAN_MARGIN
        pts, keyframes, complete = frame_table(container, stream, limit)
        n = len(pts) if complete else int(num_frames)  # cut short only when num_frames is known
        n = min(n, int(num_frames)) if num_frames else n
        if n <= 0:
            raise DecodeError(path, "no-frames")
        idx = clamp(indices, min(n, len(pts)))
        wanted = np.unique(idx)
        kw = {"format": "rgb24"}
        if size is not None:
            kw.update(width=int(size[0]), height=int(size[1]))
        got: dict[int, np.ndarray] = {}
        for start, run in seek_runs(wanted, keyframes, sequential):
            _decode_run(container, stream, pts, start, run, got, kw)
        if not got:
            raise DecodeError(path, "no-frames")
        have = np.asarray(sorted(got))
        for m in wanted:  # not decodable (corrupt, past the real end): the nearest decoded frame
            if int(m) not in got:
                got[int(m)] = got[int(have[np.argmin(np.abs(have - m))])]
        return np.stack([got[int(i)] for i in idx])
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(path, "read-failed", f"pyav: {type(e).__name__}: {e}") from e
    finally:
        container.close()


def _decode_run(container, stream, pts: np.ndarray, start: int, run: np.ndarray, got: dict, kw: dict) -> None:
    """Seek to frame ``start`` (a keyframe) and decode forward until every frame of ``run`` has passed,
    converting those; a seek that lands past the run's first frame is retried from an earlier point."""
    want = {int(pts[f]): int(f) for f in run}
    last = int(pts[run[-1]])
    while True:
        if start == 0:
            container.seek(0, stream=stream, backward=True, any_frame=False)
        else:
            container.seek(int(pts[start]), stream=stream, backward=True, any_frame=False)
        first = None
        for frame in decoded_frames(container, stream, set(want)):
            p = pts_of(frame)
            if p is None:
                continue
            first = p if first is None else first
            f = want.get(p)
            if f is not None and f not in got:
                got[f] = frame.to_ndarray(**kw)
            if p >= last:
                break
        if start == 0 or first is None or first <= int(pts[run[0]]):
            return
        start = 0  # overshot (a seek point FFmpeg placed past our keyframe): from the start
