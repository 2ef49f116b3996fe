"""Which frames to decode. Pure functions of (frame count, fps, rng) returning int64 frame indices.

Every function returns indices inside ``[0, num_frames)``, in non-decreasing temporal order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLER_KINDS = ("dense", "uniform", "caption", "multiview")


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
    num_frames: int, num_segments: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """TSN-style: split the video in ``num_segments`` equal segments, one frame from each (random
    position inside the segment with ``rng``, its middle without). Works for any count 1..N; a video
    with fewer frames than segments repeats frames (indices stay sorted)."""
    num_frames = max(1, int(num_frames))
    edges = np.linspace(0, num_frames, num_segments + 1)
    lo, hi = edges[:-1], edges[1:]
    pos = (lo + hi) / 2 if rng is None else lo + rng.random(num_segments) * (hi - lo)
    return np.clip(np.floor(pos).astype(np.int64), 0, num_frames - 1)


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
    per equal segment; num_frames from 1 to 1024+), "caption" (a clip around one caption's span; uses
    stride if given else covers the span uniformly), "multiview" (num_clips dense clips; spatial crops
    are the transform's job).
    """

    kind: str = "dense"
    num_frames: int = 16
    stride: int | None = 4
    num_clips: int = 1

    def __post_init__(self):
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind {self.kind!r} unknown; choose from {SAMPLER_KINDS}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.kind in ("dense", "multiview") and (self.stride is None or self.stride < 1):
            raise ValueError(f"sampler {self.kind!r} needs stride >= 1, got {self.stride}")
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")

    def __call__(
        self, num_frames: int, rng: np.random.Generator | None, fps: float = 25.0, span_s=None
    ) -> list[np.ndarray]:
        """Indices for one sample as a list of clips (one clip except for multiview)."""
        if self.kind == "dense":
            return [dense_clip_indices(num_frames, self.num_frames, self.stride, rng, center=rng is None)]
        if self.kind == "uniform":
            return [uniform_segment_indices(num_frames, self.num_frames, rng)]
        if self.kind == "caption":
            start_s, end_s = span_s if span_s is not None else (0.0, num_frames / fps)
            return [
                caption_window_indices(num_frames, fps, start_s, end_s, self.num_frames, self.stride, rng)
            ]
        return multiview_clip_indices(num_frames, self.num_frames, self.stride, self.num_clips)
