"""VideoDataset: index row -> frame sampler -> decoder -> uint8 transforms -> item dict.

Items: ``{"video": float32 (C,T,H,W) (or (V,C,T,H,W) for multi-view), "label": int, "video_id": str,
"sample_idx": int}`` plus ``"text"`` (captioned clips) and ``"segments"`` (float32 (S, 3):
start_s, end_s, label), ``"segment_text"`` (list[str]) and ``"frame_times"`` (float32 (T,) seconds of
the sampled frames) for long videos. A video that fails to decode is replaced by another sample chosen
deterministically from (seed, epoch, index, attempt); the failure is logged (see ``errors.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from turbo_ds.data.decode import DecodeError, decode_frames, scaled_size
from turbo_ds.data.errors import FailureLog
from turbo_ds.data.sampling import FrameSampler
from turbo_ds.data.schema import VideoIndex
from turbo_ds.data.transforms import ClipTransform, to_tchw

MAX_REPLACEMENTS = 20


class VideoDataset(Dataset):
    """Map-style dataset over a :class:`VideoIndex`.

    ``__getitem__`` takes an index or an ``(index, epoch)`` pair (what :class:`ShardedSampler`
    yields), so random crops are a function of (seed, epoch, index) whatever worker decodes them.
    """

    def __init__(
        self,
        index: VideoIndex,
        frame_sampler: FrameSampler,
        transform: ClipTransform,
        *,
        train: bool = True,
        seed: int = 0,
        backend: str = "decord",
        decode_resize: bool = True,
        with_text: bool | None = None,
        with_segments: bool | None = None,
        failures: FailureLog | None = None,
    ):
        self.index = index
        self.frame_sampler = frame_sampler
        self.transform = transform
        self.train = train
        self.seed = int(seed)
        self.backend = backend
        self.decode_resize = decode_resize
        self.with_text = frame_sampler.kind == "caption" if with_text is None else with_text
        self.with_segments = frame_sampler.kind == "uniform" if with_segments is None else with_segments
        self.failures = (
            failures if failures is not None else FailureLog(max_failures=max(10, len(index) // 10))
        )
        self._bad: set[int] = set()  # per process: videos known broken, never retried

    def __len__(self) -> int:
        return len(self.index)

    def _rng(self, idx: int, epoch: int, attempt: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, epoch, idx, attempt]) if self.train else None

    def load(self, idx: int, epoch: int = 0, attempt: int = 0) -> dict[str, Any]:
        """Decode and transform one sample; raises DecodeError when the video is broken."""
        row = self.index[idx]
        rng = self._rng(idx, epoch, attempt)
        num_frames = int(row["num_frames"] or 0)
        fps = float(row["fps"] or 25.0)
        if num_frames <= 0:
            raise DecodeError(row["abs_path"], "no-frames", "num_frames in index is 0")
        caption = None
        captions = row.get("captions") or []
        if self.with_text and captions:
            caption = captions[int(rng.integers(len(captions)))] if rng is not None else captions[0]
        span = (caption["start_s"], caption["end_s"]) if caption else None
        clips = self.frame_sampler(num_frames, rng, fps=fps, span_s=span)
        size = None
        if self.decode_resize and row["width"] and row["height"]:
            w, h = scaled_size(row["width"], row["height"], self.transform.decode_short_side)
            if w < row["width"]:
                size = (w, h)
        all_idx = np.concatenate(clips)
        frames, _ = decode_frames(
            row["abs_path"], all_idx, backend=self.backend, num_frames=num_frames, size=size
        )
        views = []
        offset = 0
        for clip_idx in clips:
            clip = to_tchw(frames[offset : offset + len(clip_idx)])
            offset += len(clip_idx)
            views.extend(self.transform(clip, rng))
        video = views[0] if len(views) == 1 else torch.stack(views)
        item: dict[str, Any] = {
            "video": video,
            "label": int(row["label"] if row["label"] is not None else -1),
            "video_id": row["video_id"],
            "sample_idx": int(idx),
        }
        if self.with_text:
            item["text"] = caption["text"] if caption else (row.get("label_name") or "")
        if self.with_segments:
            segs = row.get("segments") or []
            item["segments"] = torch.tensor(
                [[s["start_s"], s["end_s"], s["label"]] for s in segs], dtype=torch.float32
            ).reshape(-1, 3)
            item["segment_text"] = [c["text"] for c in captions]
            item["frame_times"] = torch.from_numpy(np.clip(clips[0], 0, num_frames - 1) / fps).float()
        return item

    def __getitem__(self, key) -> dict[str, Any]:
        idx, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), 0)
        cur = idx
        for attempt in range(MAX_REPLACEMENTS):
            if cur not in self._bad:
                try:
                    return self.load(cur, epoch, attempt)
                except DecodeError as e:
                    self._bad.add(cur)
                    self.failures.record(e.path, self.index[cur]["video_id"], e.reason, cur, e.detail)
            cur = int(np.random.default_rng([self.seed, epoch, idx, attempt, 1]).integers(len(self)))
        raise RuntimeError(
            f"sample {idx}: {MAX_REPLACEMENTS} replacement videos in a row failed to decode; see {self.failures.path}"
        )


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings and ragged fields (segments, segment_text) as lists."""
    out: dict[str, Any] = {
        "video": torch.stack([b["video"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "video_id": [b["video_id"] for b in batch],
        "sample_idx": torch.tensor([b["sample_idx"] for b in batch], dtype=torch.long),
    }
    if "text" in batch[0]:
        out["text"] = [b["text"] for b in batch]
    if "segments" in batch[0]:
        out["segments"] = [b["segments"] for b in batch]
        out["segment_text"] = [b["segment_text"] for b in batch]
        out["frame_times"] = torch.stack([b["frame_times"] for b in batch])
    return out
