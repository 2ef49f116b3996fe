"""Which frames to decode. Pure functions of (frame count, fps, rng) returning int64 frame indices.

Every function returns indices inside ``[0, num_frames)``, in non-decreasing temporal order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLER_KINDS = ("dense", "uniform", "caption", "multiview", "per_second")


def dense_clip_indices(
    num_frames: int,
    clip_len: int,
    stride: int,
    rng: np.random.Generator | None = None,
    *,
    center: bool = False,
) -> np.ndarray:
    """``clip_len`` frames every ``stride`` frames: a random temporal crop (``rng``) or the centre one.

    A video shorter than the span ``(clip_len - 1) * stride + 1`` gets its last frame repeated."""
    num_frames = max(1, int(num_frames))
    span = (clip_len - 1) * stride + 1
    max_start = max(0, num_frames - span)
    start = max_start // 2 if center or rng is None else int(rng.integers(0, max_start + 1))
    return np.minimum(start + np.arange(clip_len, dtype=np.int64) * stride, num_frames - 1)


def uniform_segment_indices(
    num_frames: int,
    num_segments: int,
    rng: np.random.Generator | None = None,
    *,
    position: float = 0.5,
) -> np.ndarray:
    """TSN-style: split the video in ``num_segments`` equal segments, one frame from each (random
    position inside the segment with ``rng``; without, the frame at fraction ``position`` in [0, 1) of
    every segment, its middle by default). Works for any count 1..N; a video with fewer frames than
    segments repeats frames (indices stay sorted)."""
    if not 0.0 <= position < 1.0:
        raise ValueError(f"position must be in [0, 1), got {position}")
    num_frames = max(1, int(num_frames))
    edges = np.linspace(0, num_frames, num_segments + 1)
    lo, hi = edges[:-1], edges[1:]
    if rng is not None:
        pos = lo + rng.random(num_segments) * (hi - lo)
    elif position == 0.5:
        pos = (lo + hi) / 2  # kept apart: the same floats as always at segment boundaries
    else:
        pos = lo + position * (hi - lo)
    return np.clip(np.floor(pos).astype(np.int64), 0, num_frames - 1)


def uniform_offset_indices(num_frames: int, num_segments: int, num_views: int) -> list[np.ndarray]:
    """``num_views`` uniform samplings of the whole video, view ``k`` taking the frame at fraction
    (k + 0.5) / num_views of every segment: temporal offsets as test-time views (one view = the
    segment middles, as :func:`uniform_segment_indices` without ``rng``)."""
    return [
        uniform_segment_indices(num_frames, num_segments, position=(k + 0.5) / num_views)
        for k in range(num_views)
    ]


def caption_window_indices(
    num_frames: int,
    fps: float,
    start_s: float,
    end_s: float,
    clip_len: int,
    stride: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A clip around a caption's time span: with ``stride`` None the ``clip_len`` frames cover the
    span uniformly (TSN-style inside it); with a stride, a dense clip centred on (or, with ``rng``,
    randomly placed within) the span, widened to the clip length when the span is shorter."""
    num_frames = max(1, int(num_frames))
    f0 = int(np.clip(np.floor(start_s * fps), 0, num_frames - 1))
    f1 = int(np.clip(np.ceil(end_s * fps), f0 + 1, num_frames))
    if stride is None:
        return f0 + uniform_segment_indices(f1 - f0, clip_len, rng)
    span = (clip_len - 1) * stride + 1
    if f1 - f0 >= span:
        return f0 + dense_clip_indices(f1 - f0, clip_len, stride, rng, center=rng is None)
    centre = (f0 + f1) / 2
    start = int(np.clip(round(centre - span / 2), 0, max(0, num_frames - span)))
    return np.minimum(start + np.arange(clip_len, dtype=np.int64) * stride, num_frames - 1)


def centred_clip_indices(
    num_frames: int, fps: float, center_s: float, clip_len: int, stride: int
) -> np.ndarray:
    """``clip_len`` frames every ``stride`` frames centred on time ``center_s`` (frame ``i`` covers
    ``[i/fps, (i+1)/fps)``), moved to lie inside the video when it would cross an end; a video shorter
    than the clip starts at frame 0 and repeats its last frame."""
    num_frames = max(1, int(num_frames))
    span = (clip_len - 1) * stride + 1
    start = int(np.floor(center_s * fps - span / 2 + 0.5))
    start = int(np.clip(start, 0, max(0, num_frames - span)))
    return np.minimum(start + np.arange(clip_len, dtype=np.int64) * stride, num_frames - 1)


def clip_center_s(indices: np.ndarray, fps: float) -> float:
    """Time (s) at the middle of a clip's first and last frames (frame ``i`` is centred on (i+0.5)/fps)."""
    return float((int(indices[0]) + int(indices[-1])) / 2 + 0.5) / float(fps)


def num_seconds(num_frames: int, fps: float) -> int:
    """ceil(duration) of a video of ``num_frames`` at ``fps`` (at least 1), tolerant to float32 fps."""
    dur = max(1, int(num_frames)) / float(fps)
    return max(1, math.ceil(dur - 1e-6 * max(1.0, dur)))


def per_second_count(num_frames: int, fps: float, max_seconds: int | None = None) -> int:
    """S, the seconds that get a clip: ceil(duration), or ``max_seconds`` if smaller."""
    n_sec = num_seconds(num_frames, fps)
    return n_sec if max_seconds is None else min(n_sec, int(max_seconds))


def per_second_clip_indices(
    num_frames: int,
    fps: float,
    clip_len: int,
    stride: int,
    max_seconds: int | None = None,
    first: int = 0,
    count: int | None = None,
) -> list[np.ndarray]:
    """One dense clip per second of the video (HTM-Align evaluation): clip ``s`` is centred on
    ``s + 0.5`` s, for ``s`` in ``0 .. S-1`` with S = ceil(duration), or ``min(S, max_seconds)``: only
    the first ``max_seconds`` seconds. ``first``, ``count``: only seconds ``first .. first+count-1``
    of those (a chunk)."""
    n_sec = per_second_count(num_frames, fps, max_seconds)
    stop = n_sec if count is None else min(n_sec, int(first) + int(count))
    return [centred_clip_indices(num_frames, fps, s + 0.5, clip_len, stride) for s in range(first, stop)]


def multiview_clip_indices(num_frames: int, clip_len: int, stride: int, num_clips: int) -> list[np.ndarray]:
    """``num_clips`` dense clips with starts evenly spread over the video (the test-time views)."""
    num_frames = max(1, int(num_frames))
    span = (clip_len - 1) * stride + 1
    max_start = max(0, num_frames - span)
    if num_clips == 1:
        starts = [max_start // 2]
    else:
        starts = np.linspace(0, max_start, num_clips).round().astype(int).tolist()
    return [np.minimum(s + np.arange(clip_len, dtype=np.int64) * stride, num_frames - 1) for s in starts]


@dataclass
class FrameSampler:
    """The sampler choice in one object (what ``build_dataloader`` builds from its arguments).

    kind: "dense" (num_frames x stride, random crop in train / centre in eval), "uniform" (one frame
    per equal segment; num_frames from 1 to 1024+; with num_clips V > 1, V samplings: in eval view k
    takes the frame at (k + 0.5) / V of each segment), "caption" (a clip around one caption's span; uses
    stride if given else covers the span uniformly), "multiview" (num_clips dense clips; spatial crops
    are the transform's job), "per_second" (one dense clip per second of the video, centred on
    s + 0.5 s; ``max_seconds`` keeps the first seconds only; with ``chunk_seconds`` a sample is one
    chunk of at most that many consecutive seconds, so a video of S seconds makes
    ``num_chunks`` = ceil(S / chunk_seconds) samples).
    """

    kind: str = "dense"
    num_frames: int = 16
    stride: int | None = 4
    num_clips: int = 1
    max_seconds: int | None = None
    chunk_seconds: int | None = None

    def __post_init__(self):
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind {self.kind!r} unknown; choose from {SAMPLER_KINDS}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.kind in ("dense", "multiview", "per_second") and (self.stride is None or self.stride < 1):
            raise ValueError(f"sampler {self.kind!r} needs stride >= 1, got {self.stride}")
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.max_seconds is not None and self.max_seconds < 1:
            raise ValueError(f"max_seconds must be >= 1 or None, got {self.max_seconds}")
        if self.chunk_seconds is not None and (self.kind != "per_second" or self.chunk_seconds < 1):
            raise ValueError(
                f"chunk_seconds must be None, or >= 1 with sampler 'per_second'; got {self.chunk_seconds} "
                f"with sampler {self.kind!r}"
            )

    def num_chunks(self, num_frames: int, fps: float) -> int:
        """per_second: the samples a video makes, ceil(S / chunk_seconds) (1 without chunking)."""
        if self.chunk_seconds is None:
            return 1
        return -(-per_second_count(num_frames, fps, self.max_seconds) // self.chunk_seconds)

    def chunk_start_s(self, chunk: int) -> int:
        """per_second: the first second of chunk ``chunk``."""
        return int(chunk) * self.chunk_seconds if self.chunk_seconds is not None else 0

    def __call__(
        self,
        num_frames: int,
        rng: np.random.Generator | None,
        fps: float = 25.0,
        span_s=None,
        center_s: float | None = None,
        chunk: int = 0,
    ) -> list[np.ndarray]:
        """Indices for one sample as a list of clips (one clip except for multiview and per_second).

        caption: with a stride and ``center_s``, the clip is centred on ``center_s`` (what the dataset's
        caption mode passes: the caption's centre, jittered in training); otherwise around ``span_s``.
        per_second: the clips of chunk ``chunk`` (every second without ``chunk_seconds``)."""
        if self.kind == "dense":
            return [dense_clip_indices(num_frames, self.num_frames, self.stride, rng, center=rng is None)]
        if self.kind == "uniform":
            if self.num_clips == 1:
                return [uniform_segment_indices(num_frames, self.num_frames, rng)]
            if rng is not None:  # training: independent random positions per view
                return [
                    uniform_segment_indices(num_frames, self.num_frames, rng) for _ in range(self.num_clips)
                ]
            return uniform_offset_indices(num_frames, self.num_frames, self.num_clips)
        if self.kind == "per_second":
            return per_second_clip_indices(
                num_frames,
                fps,
                self.num_frames,
                self.stride,
                self.max_seconds,
                first=self.chunk_start_s(chunk),
                count=self.chunk_seconds,
            )
        if self.kind == "caption":
            if center_s is not None and self.stride is not None:
                return [centred_clip_indices(num_frames, fps, center_s, self.num_frames, self.stride)]
            start_s, end_s = span_s if span_s is not None else (0.0, num_frames / fps)
            return [
                caption_window_indices(num_frames, fps, start_s, end_s, self.num_frames, self.stride, rng)
            ]
        return multiview_clip_indices(num_frames, self.num_frames, self.stride, self.num_clips)
