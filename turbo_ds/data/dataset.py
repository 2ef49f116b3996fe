"""VideoDataset: index row -> frame sampler -> decoder -> uint8 transforms -> item dict.

Items: ``{"video": float32 (C,T,H,W) (or (V,C,T,H,W) for multi-view), "label": int, "video_id": str,
"sample_idx": int}`` plus ``"text"`` (captioned clips) and ``"segments"`` (float32 (S, 3):
start_s, end_s, label), ``"segment_text"`` (list[str]) and ``"frame_times"`` (float32 (T,) seconds of
the sampled frames) for long videos.

Text-video modes (sampler kinds):

- ``caption``: a clip around one caption. Training: ``samples_per_video`` items per video, each with a
  caption drawn from (seed, epoch, item); evaluation: one item per (video, caption) pair. Items add
  ``text`` (that caption), ``captions`` (K = ``num_captions`` str: it, then the K-1 other captions of
  the video nearest in time to the clip), ``caption_mask`` (K,) bool, ``clip_center_s`` (float).
- ``per_second``: one item per chunk of a video (HTM-Align evaluation): ``video`` (S_c, C, T, H, W) with
  one clip per second of the chunk (at most ``chunk_seconds``; a whole video without chunking),
  ``clip_times`` (S_c,), ``chunk_index`` and ``num_chunks``; the video's first chunk carries every
  caption of the video (``captions``, ``caption_start_s``, ``caption_end_s``, ``alignable``), the
  others none (M = 0), so a video's text is tokenised and embedded once.

With a ``text_transform`` (a picklable tokenizer, run in the workers) items also carry ``text_tokens``
(n, L) long for their captions. A video that fails to decode is replaced by another sample chosen
deterministically from (seed, epoch, index, attempt); the failure is logged (see ``errors.py``), and
a video already in the log is replaced the same way without being opened again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from turbo_ds.data.decode import DecodeError, decode_frames, scaled_size
from turbo_ds.data.errors import FailureLog
from turbo_ds.data.sampling import FrameSampler, clip_center_s
from turbo_ds.data.schema import VideoIndex
from turbo_ds.data.transforms import ClipTransform, to_tchw

MAX_REPLACEMENTS = 20
TextTransform = Callable[[list[str]], torch.Tensor]


def frame_count_and_fps(row: dict) -> tuple[int, float]:
    """The index row's frame count and fps (25 when unknown); DecodeError for a video with no frames."""
    num_frames = int(row["num_frames"] or 0)
    if num_frames <= 0:
        raise DecodeError(row["abs_path"], "no-frames", "num_frames in index is 0")
    return num_frames, float(row["fps"] or 25.0)


def _centre(caption: dict) -> float:
    return (float(caption["start_s"]) + float(caption["end_s"])) / 2


def _usable(caption: dict, only_alignable: bool) -> bool:
    """A caption counts unless ``only_alignable`` and it is explicitly not alignable (null = unknown)."""
    return not (only_alignable and caption.get("alignable") is False)


def nearest_captions(captions: list[dict], chosen: int, usable: list[int], center_s: float, k: int):
    """(positions, mask): ``chosen`` first, then the k-1 other ``usable`` captions whose span centre is
    nearest to ``center_s`` (ties: earlier caption first); fewer than k repeat ``chosen``, masked False."""
    others = sorted(
        (i for i in usable if i != chosen), key=lambda i: (abs(_centre(captions[i]) - center_s), i)
    )
    picked = [chosen, *others[: k - 1]]
    mask = [True] * len(picked) + [False] * (k - len(picked))
    return picked + [chosen] * (k - len(picked)), mask


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
        backend: str = "auto",
        decode_device: str = "cpu",
        decode_once: bool = True,
        decode_resize: bool = True,
        with_text: bool | None = None,
        with_segments: bool | None = None,
        failures: FailureLog | None = None,
        text_transform: TextTransform | None = None,
        samples_per_video: int = 1,
        num_captions: int = 1,
        jitter_s: float = 0.0,
        only_alignable: bool = True,
    ):
        kind = frame_sampler.kind
        if kind != "caption" and (samples_per_video != 1 or num_captions != 1 or jitter_s):
            raise ValueError(
                "samples_per_video, num_captions and jitter_s apply to sampler='caption' only "
                f"(sampler={kind!r})"
            )
        if samples_per_video < 1 or num_captions < 1 or jitter_s < 0:
            raise ValueError(
                f"need samples_per_video >= 1, num_captions >= 1, jitter_s >= 0; got {samples_per_video}, "
                f"{num_captions}, {jitter_s}"
            )
        if kind == "per_second" and train:
            raise ValueError("sampler='per_second' is an evaluation sampler: pass train=False")
        self.index = index
        self.frame_sampler = frame_sampler
        self.transform = transform
        self.train = train
        self.seed = int(seed)
        self.backend = backend
        self.decode_device = decode_device
        self.decode_once = bool(decode_once)
        self.decode_resize = decode_resize
        self.with_text = frame_sampler.kind == "caption" if with_text is None else with_text
        self.with_segments = frame_sampler.kind == "uniform" if with_segments is None else with_segments
        self.failures = (
            failures if failures is not None else FailureLog(max_failures=max(10, len(index) // 10))
        )
        self.text_transform = text_transform
        self.samples_per_video = int(samples_per_video)
        self.num_captions = int(num_captions)
        self.jitter_s = float(jitter_s)
        self.only_alignable = bool(only_alignable)
        # Caption evaluation: one item per (video position, caption position) pair.
        self._pairs: np.ndarray | None = None
        # per_second: one item per (video position, chunk, chunks of the video).
        self._chunks: np.ndarray | None = self._second_chunks() if kind == "per_second" else None
        if kind == "caption" and not train:
            self._pairs = self._caption_pairs()
            if len(self._pairs) == 0:
                raise ValueError(
                    f"{index.index_path} (split {index.split!r}): no captions to evaluate"
                    + (" (only_alignable=True skips alignable=False captions)" if only_alignable else "")
                )

    def _caption_pairs(self) -> np.ndarray:
        """(N, 2) int32 (video position, caption position) of every usable caption of the split, from
        the mapped caption lengths and ``alignable`` flags alone (no caption text is read)."""
        lengths = self.index.caption_lengths()
        video = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        pairs = np.stack([video, (np.arange(len(video)) - first).astype(np.int32)], axis=1)
        flags = self.index.caption_field("alignable") if self.only_alignable else None
        if flags is not None:
            pairs = pairs[pc.fill_null(flags, True).to_numpy(zero_copy_only=False).astype(bool)]
        return pairs

    def _second_chunks(self) -> np.ndarray:
        """(N, 3) int64 (video position, chunk, num_chunks) of every per_second chunk of the split,
        from the index's frame counts and fps (as :func:`frame_count_and_fps` reads them; a video
        without frames makes one item, which fails to decode and is replaced)."""
        frames = np.nan_to_num(self.index.column("num_frames").astype(np.float64), nan=0.0)
        fps = np.nan_to_num(self.index.column("fps").astype(np.float64), nan=0.0)
        counts = [
            self.frame_sampler.num_chunks(max(int(n), 1), float(f) if f > 0 else 25.0)
            for n, f in zip(frames, fps, strict=True)
        ]
        counts = np.asarray(counts, dtype=np.int64)
        video = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        chunk = np.arange(len(video), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.stack([video, chunk, counts[video]], axis=1)

    def __len__(self) -> int:
        if self._pairs is not None:
            return len(self._pairs)
        if self._chunks is not None:
            return len(self._chunks)
        if self.frame_sampler.kind == "caption":
            return len(self.index) * self.samples_per_video
        return len(self.index)

    def video_position(self, idx: int) -> int:
        """Position (in the split) of the video item ``idx`` comes from."""
        if self._pairs is not None:
            return int(self._pairs[idx, 0])
        if self._chunks is not None:
            return int(self._chunks[idx, 0])
        if self.frame_sampler.kind == "caption":
            return int(idx) // self.samples_per_video
        return int(idx)

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        tok = self.text_transform(list(texts))
        tok = torch.as_tensor(tok)
        if tok.ndim != 2 or tok.shape[0] != len(texts):
            raise ValueError(
                f"text_transform must return (n, L) token ids for n={len(texts)} texts, got {tuple(tok.shape)}"
            )
        return tok.long()

    def _decode(self, row: dict, clips: list[np.ndarray], num_frames: int, rng) -> list[torch.Tensor]:
        """Every clip's frames in one decode call, then the transform: a list of views."""
        return self._views(self._decode_frames(row, np.concatenate(clips), num_frames), clips, rng)

    def _decode_frames(self, row: dict, indices: np.ndarray, num_frames: int) -> np.ndarray:
        """(len(indices), H, W, 3) uint8: the backend opens the video once and decodes the distinct
        indices in one sorted pass, at the reduced size the transform needs."""
        size = None
        if self.decode_resize and row["width"] and row["height"]:
            w, h = scaled_size(row["width"], row["height"], self.transform.decode_short_side)
            if w < row["width"]:
                size = (w, h)
        frames, _ = decode_frames(
            row["abs_path"],
            indices,
            backend=self.backend,
            num_frames=num_frames,
            size=size,
            device=self.decode_device,
        )
        return frames

    def _views(self, frames: np.ndarray, clips: list[np.ndarray], rng) -> list[torch.Tensor]:
        """The transformed views of ``clips``, whose frames follow each other in ``frames``."""
        views = []
        offset = 0
        for clip_idx in clips:
            clip = to_tchw(frames[offset : offset + len(clip_idx)])
            offset += len(clip_idx)
            views.extend(self.transform(clip, rng))
        return views

    @staticmethod
    def _base_item(row: dict, video: torch.Tensor, idx: int) -> dict[str, Any]:
        return {
            "video": video,
            "label": int(row["label"] if row["label"] is not None else -1),
            "video_id": row["video_id"],
            "sample_idx": int(idx),
        }

    def _load_caption(self, idx: int, epoch: int, attempt: int) -> dict[str, Any]:
        """Caption mode: a clip centred on a caption (+ jitter in training) and its K nearest captions."""
        plan = self._caption_plan(idx, epoch, attempt)
        views = self._decode(plan.row, plan.clips, plan.num_frames, plan.rng)
        return self._caption_item(plan, views)

    def _caption_plan(self, idx: int, epoch: int, attempt: int) -> _CaptionPlan:
        """Which caption and which frames item ``idx`` takes (the sampling half of :meth:`_load_caption`;
        ``rng`` goes on to the transform, so one item draws the same numbers however it is decoded)."""
        pos = self.video_position(idx)
        row = self.index[pos]
        rng = self._rng(idx, epoch, attempt)
        num_frames, fps = frame_count_and_fps(row)
        captions = row.get("captions") or []
        usable = [i for i, c in enumerate(captions) if _usable(c, self.only_alignable)]
        if self._pairs is not None:
            chosen = int(self._pairs[idx, 1])
        elif usable:
            # A video's samples_per_video items of an epoch take distinct captions while there are
            # enough (one shuffle per video and epoch), so grouped batches hold no duplicate pairs.
            order = np.random.default_rng([self.seed, epoch, pos, attempt]).permutation(len(usable))
            chosen = usable[int(order[(idx % self.samples_per_video) % len(usable)])]
        else:
            chosen = None
        if chosen is None:  # a training video without captions: a clip anywhere, its label name as text
            clips = self.frame_sampler(num_frames, rng, fps=fps)
        else:
            cap = captions[chosen]
            shift = (
                float(rng.uniform(-self.jitter_s, self.jitter_s))
                if rng is not None and self.jitter_s
                else 0.0
            )
            span = (cap["start_s"] + shift, cap["end_s"] + shift)
            clips = self.frame_sampler(num_frames, rng, fps=fps, span_s=span, center_s=_centre(cap) + shift)
        centre = clip_center_s(np.clip(clips[0], 0, num_frames - 1), fps)
        return _CaptionPlan(idx, row, rng, clips, num_frames, chosen, captions, usable, centre)

    def _caption_item(self, plan: _CaptionPlan, views: list[torch.Tensor]) -> dict[str, Any]:
        row, chosen, captions, centre = plan.row, plan.chosen, plan.captions, plan.centre
        item = self._base_item(row, views[0], plan.idx)
        item["clip_center_s"] = centre
        if not self.with_text:
            return item
        k = self.num_captions
        if chosen is None:
            text = row.get("label_name") or ""
            texts, mask = [text] * k, [bool(text)] + [False] * (k - 1)
        else:
            picked, mask = nearest_captions(captions, chosen, plan.usable, centre, k)
            text, texts = captions[chosen]["text"], [captions[i]["text"] for i in picked]
        item["text"] = text
        item["captions"] = texts
        item["caption_mask"] = torch.tensor(mask, dtype=torch.bool)
        if self.text_transform is not None:
            item["text_tokens"] = self._tokens(texts)
        return item

    def _load_per_second(self, idx: int) -> dict[str, Any]:
        """Alignment mode: one clip per second of one chunk of the video (deterministic), and all the
        video's captions on its first chunk."""
        pos, chunk, num_chunks = (int(x) for x in self._chunks[idx])
        row = self.index[pos]
        num_frames, fps = frame_count_and_fps(row)
        clips = self.frame_sampler(num_frames, None, fps=fps, chunk=chunk)
        views = self._decode(row, clips, num_frames, None)
        item = self._base_item(row, torch.stack(views), idx)
        item["chunk_index"], item["num_chunks"] = chunk, num_chunks
        # The text rides with the first chunk only: a video's sentences are embedded once.
        captions = (row.get("captions") or []) if chunk == 0 else []
        item["captions"] = [c["text"] for c in captions]
        item["caption_start_s"] = torch.tensor([c["start_s"] for c in captions], dtype=torch.float32)
        item["caption_end_s"] = torch.tensor([c["end_s"] for c in captions], dtype=torch.float32)
        item["alignable"] = torch.tensor(
            [c.get("alignable") is not False for c in captions], dtype=torch.bool
        )
        first = self.frame_sampler.chunk_start_s(chunk)
        item["clip_times"] = torch.arange(first, first + len(clips), dtype=torch.float32) + 0.5
        if self.text_transform is not None:
            item["text_tokens"] = self._tokens(item["captions"])  # (0, L) without captions
        return item

    def _rng(self, idx: int, epoch: int, attempt: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, epoch, idx, attempt]) if self.train else None

    def load(self, idx: int, epoch: int = 0, attempt: int = 0) -> dict[str, Any]:
        """Decode and transform one sample; raises DecodeError when the video is broken."""
        if self.frame_sampler.kind == "caption":
            return self._load_caption(idx, epoch, attempt)
        if self.frame_sampler.kind == "per_second":
            return self._load_per_second(idx)
        row = self.index[idx]
        rng = self._rng(idx, epoch, attempt)
        num_frames, fps = frame_count_and_fps(row)
        caption = None
        captions = row.get("captions") or []
        if self.with_text and captions:
            caption = captions[int(rng.integers(len(captions)))] if rng is not None else captions[0]
        span = (caption["start_s"], caption["end_s"]) if caption else None
        clips = self.frame_sampler(num_frames, rng, fps=fps, span_s=span)
        views = self._decode(row, clips, num_frames, rng)
        item = self._base_item(row, views[0] if len(views) == 1 else torch.stack(views), idx)
        if self.with_text:
            item["text"] = caption["text"] if caption else (row.get("label_name") or "")
            if self.text_transform is not None:
                item["text_tokens"] = self._tokens([item["text"]])
        if self.with_segments:
            segs = row.get("segments") or []
            item["segments"] = torch.tensor(
                [[s["start_s"], s["end_s"], s["label"]] for s in segs], dtype=torch.float32
            ).reshape(-1, 3)
            item["segment_text"] = [c["text"] for c in captions]
            item["frame_times"] = torch.from_numpy(np.clip(clips[0], 0, num_frames - 1) / fps).float()
        return item

    def __getitem__(self, key) -> dict[str, Any]:
        return self._item(key)

    def _item(self, key, failed: DecodeError | None = None) -> dict[str, Any]:
        """Item ``key`` (``failed``: its video's first decode already failed with this error)."""
        start = time.perf_counter()
        item = self._get(key, failed)
        # The seconds this process spent on the item (decode, replacements, transforms): the loop turns
        # them into a per-worker rate, and so into how many workers would keep up with the model.
        item["load_s"] = time.perf_counter() - start
        return item

    def __getitems__(self, keys: list) -> list[dict[str, Any]]:
        """A batch's items (what the DataLoader asks for when the dataset has this method). Caption items
        of one video (``group_by_video``; caption evaluation, in order) are decoded together: the video
        opened once and the union of their frames decoded in one sorted pass. Every item is the one
        ``__getitem__`` gives; a video that fails is logged once and its items replaced as there."""
        if self.frame_sampler.kind != "caption" or not self.decode_once:
            return [self[key] for key in keys]
        by_video: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_video.setdefault(self.video_position(_key(key)[0]), []).append(i)
        items: list[dict[str, Any] | None] = [None] * len(keys)
        for pos, members in by_video.items():
            group = [keys[i] for i in members]
            loaded = self._load_caption_group(pos, group) if len(group) > 1 else None
            if isinstance(loaded, DecodeError):  # as one by one: the first item tried it, the rest skip
                loaded = [self._item(group[0], failed=loaded), *(self[k] for k in group[1:])]
            for i, item in zip(members, loaded or [self[k] for k in group], strict=True):
                items[i] = item
        return items

    def _load_caption_group(self, pos: int, keys: list) -> list[dict[str, Any]] | DecodeError | None:
        """The caption items ``keys`` of video ``pos`` from one decode call; the DecodeError when the
        video fails; None when it is known to fail (each item then goes through ``__getitem__``)."""
        known = self.failures.known_failed()
        if known and self.index.abs_path(pos) in known:
            return None
        start = time.perf_counter()
        try:
            plans = [self._caption_plan(idx, epoch, 0) for idx, epoch in map(_key, keys)]
            indices = np.concatenate([c for plan in plans for c in plan.clips])
            frames = self._decode_frames(plans[0].row, indices, plans[0].num_frames)
        except DecodeError as e:
            return e
        items, offset = [], 0
        for plan in plans:
            n = sum(len(c) for c in plan.clips)
            items.append(
                self._caption_item(plan, self._views(frames[offset : offset + n], plan.clips, plan.rng))
            )
            offset += n
        seconds = (time.perf_counter() - start) / len(items)
        for item in items:
            item["load_s"] = seconds
        return items

    def _get(self, key, failed: DecodeError | None = None) -> dict[str, Any]:
        idx, epoch = _key(key)
        cur = idx
        for attempt in range(MAX_REPLACEMENTS):
            pos = self.video_position(cur)
            known = self.failures.known_failed()  # by any worker of this rank, in any epoch
            if failed is not None:  # tried already (a batch's items of one video, decoded together)
                e, failed = failed, None
                self.failures.record(e.path, self.index[pos]["video_id"], e.reason, cur, e.detail, e.log)
            elif known and (path := self.index.abs_path(pos)) in known:
                self.failures.record_skip(path, cur)
            else:
                try:
                    return self.load(cur, epoch, attempt)
                except DecodeError as e:
                    self.failures.record(e.path, self.index[pos]["video_id"], e.reason, cur, e.detail, e.log)
            # The same replacement whether the video was just tried or skipped as known-failed (which
            # depends on which worker met it first): the data never depends on the log.
            cur = int(np.random.default_rng([self.seed, epoch, idx, attempt, 1]).integers(len(self)))
        raise RuntimeError(
            f"sample {idx}: {MAX_REPLACEMENTS} replacement videos in a row failed to decode; see {self.failures.path}"
        )


def _key(key) -> tuple[int, int]:
    """(index, epoch) of a sampler key: an ``(index, epoch)`` pair or a bare index (epoch 0)."""
    return (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (int(key), 0)


@dataclass
class _CaptionPlan:
    """What one caption item takes, decided before decoding (see VideoDataset._caption_plan)."""

    idx: int
    row: dict
    rng: np.random.Generator | None
    clips: list[np.ndarray]
    num_frames: int
    chosen: int | None
    captions: list[dict]
    usable: list[int]
    centre: float


# Item tensors stacked along a new batch dimension (per_second items: the loader uses batch size 1).
_STACKED = ("text_tokens", "caption_mask", "caption_start_s", "caption_end_s", "alignable", "clip_times")


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings and ragged fields (segments, segment_text, captions) as lists."""
    out: dict[str, Any] = {
        "video": torch.stack([b["video"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "video_id": [b["video_id"] for b in batch],
        "sample_idx": torch.tensor([b["sample_idx"] for b in batch], dtype=torch.long),
        "load_s": sum(b.get("load_s", 0.0) for b in batch),  # taken out by ResumableDataLoader
    }
    if "text" in batch[0]:
        out["text"] = [b["text"] for b in batch]
    if "segments" in batch[0]:
        out["segments"] = [b["segments"] for b in batch]
        out["segment_text"] = [b["segment_text"] for b in batch]
        out["frame_times"] = torch.stack([b["frame_times"] for b in batch])
    if "captions" in batch[0]:
        out["captions"] = [b["captions"] for b in batch]
    if "clip_center_s" in batch[0]:
        out["clip_center_s"] = torch.tensor([b["clip_center_s"] for b in batch], dtype=torch.float32)
    for key in ("chunk_index", "num_chunks"):
        if key in batch[0]:
            out[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
    for key in _STACKED:
        if key in batch[0]:
            out[key] = torch.stack([b[key] for b in batch])
    return out
