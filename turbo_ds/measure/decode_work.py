"""Where a frame-exact CPU decode of sampled frames spends its time, and the least it could take.

Every CPU backend (torchcodec, decord, PyAV) decodes H.264 with the same FFmpeg decoder, so the least
work any of them can do for a set of wanted frames is to decode, for each wanted frame, the reference
frames from its keyframe up to it, and the frame itself: a frame that is not a reference can be
skipped, a reference frame cannot without changing the pixels of those after it. :func:`decode_work`
counts those frames (the *minimum*), times PyAV's path stage by stage (the packet scan that finds
frames by pts, seeking and decoding, the conversion of wanted frames to RGB at the decode size) and
gives the floor: the scan, the minimum frames at the measured cost of a decoded frame, and the
conversion. Today's path divided by the floor bounds the speed-up any frame-exact CPU decoder can reach.
Times are CPU seconds of the process (``time.process_time``), what a core pays: decord runs a reader
thread beside its decoding one even at ``num_threads=1``, so its wall time undercounts its cost.
"""

from __future__ import annotations

import time

import numpy as np

from turbo_ds.data.backends.common import clamp
from turbo_ds.data.backends.pyav_decoder import (
    decoded_frames,
    frame_table,
    keyframe_before,
    pts_of,
    seek_runs,
)


def reference_frames(path: str) -> np.ndarray:
    """Frame numbers (presentation order) of the frames other frames may reference: what a decoder
    told to skip non-reference frames (FFmpeg's ``skip_frame = NONREF``) still returns."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        pts, _, _ = frame_table(container, stream)
        container.seek(0, stream=stream, backward=True, any_frame=False)
        refs = {pts_of(f) for f in decoded_frames(container, stream, wanted_pts=set())}
    return np.flatnonzero(np.isin(pts, np.fromiter(refs, np.int64, len(refs))))


def minimum_frames(wanted: np.ndarray, keyframes: np.ndarray, references: np.ndarray) -> int:
    """How many frames a frame-exact decoder must decode to output ``wanted``: the union, over wanted
    frames, of the reference frames from the keyframe before it up to it, and the frame itself."""
    needed = set(int(w) for w in wanted)
    for key, w in zip(keyframe_before(wanted, keyframes), wanted, strict=True):
        lo, hi = np.searchsorted(references, [key, w + 1])
        needed.update(int(r) for r in references[lo:hi])
    return len(needed)


def decode_work(path: str, indices, size: tuple[int, int], references: np.ndarray | None = None) -> dict:
    """Stage CPU times (s) and frame counts of PyAV's frame-exact decode of ``indices`` at ``size`` (w, h),
    and the floor. ``references``: from :func:`reference_frames` (computed when None)."""
    import av

    if references is None:
        references = reference_frames(path)
    with av.open(path) as container:
        stream = container.streams.video[0]
        t0 = time.process_time()
        pts, keyframes, _ = frame_table(container, stream)
        scan_s = time.process_time() - t0
        wanted = np.unique(clamp(indices, len(pts)))
        converted, decoded, convert_s = set(), 0, 0.0
        t0 = time.process_time()
        for start, run in seek_runs(wanted, keyframes, None):
            want = {int(pts[f]) for f in run}
            last = int(pts[run[-1]])
            container.seek(int(pts[start]), stream=stream, backward=True, any_frame=False)
            for frame in decoded_frames(container, stream, want):
                decoded += 1
                p = pts_of(frame)
                if p in want and p not in converted:
                    t1 = time.process_time()
                    frame.to_ndarray(format="rgb24", width=int(size[0]), height=int(size[1]))
                    convert_s += time.process_time() - t1
                    converted.add(p)
                if p is not None and p >= last:
                    break
        decode_s = time.process_time() - t0 - convert_s
    minimum = minimum_frames(wanted, keyframes, references)
    per_frame_s = decode_s / max(decoded, 1)
    return {
        "frames": len(pts),
        "wanted": len(wanted),
        "decoded": decoded,
        "minimum": minimum,
        "references": len(references),
        "scan_s": scan_s,
        "decode_s": decode_s,
        "convert_s": convert_s,
        "per_decoded_frame_s": per_frame_s,
        "floor_s": scan_s + minimum * per_frame_s + convert_s,
        "floor_without_scan_s": minimum * per_frame_s + convert_s,
        "av_version": av.__version__,
    }
