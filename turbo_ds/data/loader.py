"""build_dataloader: the one entry point the trainer calls."""

from __future__ import annotations

import atexit
import os
import signal
import weakref

from torch.utils.data import DataLoader

from turbo_ds.config import ConfigError
from turbo_ds.data.backends.choice import resolve
from turbo_ds.data.dataset import TextTransform, VideoDataset, collate_samples
from turbo_ds.data.errors import FailureLog
from turbo_ds.data.sampler import ShardedSampler
from turbo_ds.data.sampling import FrameSampler
from turbo_ds.data.schema import VideoIndex
from turbo_ds.data.transforms import ClipTransform

# Every iterator that started worker processes, until it is garbage collected: see _stop_workers_at_exit.
_worker_iterators: weakref.WeakSet = weakref.WeakSet()


def _stop_workers(iterator) -> None:
    """Shut an iterator's workers down (end-of-data sentinel, join), then SIGKILL any still alive: they
    ignore SIGTERM, the signal torch's and multiprocessing's own last resort sends."""
    if hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    for w in getattr(iterator, "_workers", ()):
        if w.is_alive():
            w.kill()
            w.join()


@atexit.register
def _stop_workers_at_exit() -> None:
    """A script that ends with a live iterator (a notebook, a benchmark, any library use) would hang:
    at exit torch skips its worker shutdown and multiprocessing SIGTERMs its daemonic children, then
    joins them, and our workers ignore SIGTERM (:func:`ignore_stop_signals`). Registered after torch and
    multiprocessing imported (atexit runs last-registered first), so this runs before both."""
    for iterator in list(_worker_iterators):
        _stop_workers(iterator)


class ResumableDataLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardedSampler` how many samples were consumed, so
    ``loader.sampler.state_dict()`` is exact even with workers prefetching ahead."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            _worker_iterators.add(iterator)
        return iterator

    # Seconds the producing processes (workers, or this one) spent on the batches handed out so far,
    # and how many: the loop's data-wait report derives a per-worker rate from their differences.
    load_seconds = 0.0
    batches_loaded = 0

    def __iter__(self):
        for batch in super().__iter__():
            self.sampler.advance(len(batch["sample_idx"]))
            self.load_seconds += float(batch.pop("load_s", 0.0))
            self.batches_loaded += 1
            yield batch

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def failure_summary(self) -> dict:
        return self.dataset.failures.summary()

    def close(self) -> None:
        """Stop the worker processes now (persistent workers otherwise live until garbage collection)."""
        it = getattr(self, "_iterator", None)
        if it is not None:
            _stop_workers(it)
        self._iterator = None


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a scheduler signals every process of a job step, workers included.
    The stop request is the rank's to handle (save, then shut its workers down); a worker that died
    of the signal would make the rank fail first ("DataLoader worker ... killed by signal")."""
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def build_dataloader(
    index_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    split: str | None = "train",
    sampler: str = "dense",
    num_frames: int = 16,
    stride: int | None = 4,
    num_clips: int = 1,
    num_crops: int = 1,
    img_size: int = 224,
    train: bool = True,
    batch_size: int = 8,
    num_workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    backend: str = "auto",
    decode_device: str = "cpu",
    decode_once: bool = True,
    hflip: float = 0.0,
    scale: tuple[float, float] = (0.35, 1.0),
    max_failures: int | float = 0.05,
    failure_log_dir: str | os.PathLike | None = None,
    prefetch_factor: int | None = 2,
    persistent_workers: bool | None = None,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    with_text: bool | None = None,
    with_segments: bool | None = None,
    decode_resize: bool = True,
    text_transform: TextTransform | None = None,
    samples_per_video: int = 1,
    num_captions: int = 1,
    jitter_s: float = 0.0,
    only_alignable: bool = True,
    max_seconds: int | None = None,
    chunk_seconds: int | None = None,
    group_by_video: bool = False,
) -> ResumableDataLoader:
    """DataLoader over one split of a Parquet video index, sharded for ``rank`` of ``world_size``.

    Args:
        index_path: the ``.parquet`` index (``python -m data_index build`` / ``demo``).
        root: directory the index's relative ``path`` column is relative to (default: index's folder).
        split: rows with this ``split`` value ("train", "val", ...); None = all rows.
        sampler: "dense" (``num_frames`` every ``stride`` frames; random temporal crop when ``train``,
            centre otherwise), "uniform" (``num_frames`` equal segments, one frame each; long videos,
            adds ``segments``/``segment_text``/``frame_times`` to items; with ``num_clips`` V > 1,
            ``video`` is (V, C, T, H, W): in eval view k takes the frame at (k + 0.5) / V of every
            segment, in training V independent random samplings), "caption" (a clip around one
            caption, see below), "multiview" (``num_clips`` clips x ``num_crops`` (1 or 3) spatial
            crops: ``video`` is (V, C, T, H, W)), "per_second" (HTM-Align evaluation, see below).
            caption, training: ``samples_per_video`` items per video (length = videos x
            samples_per_video); item j is video j // samples_per_video with a caption drawn from
            (seed, epoch, video): a video's items of one epoch take distinct captions while it has
            enough; the clip (``num_frames`` every ``stride`` frames) is centred on the
            caption's centre shifted uniformly in [-jitter_s, +jitter_s], kept inside the video
            (``stride`` None: the shifted span covered uniformly). A video without captions gets a clip
            anywhere and its label name (or "") as text, masked False when empty.
            caption, evaluation: one item per (video, caption) pair of the split (length = captions),
            the clip centred on the caption, no jitter.
            Caption items add ``text`` (str), ``captions`` (``num_captions`` = K str: ``text`` first,
            then the K-1 other captions of the video whose span centre is nearest the clip centre),
            ``caption_mask`` (K,) bool (False for repeats when the video has fewer than K captions),
            ``clip_center_s`` (float, centre of the clip's first and last frames).
            per_second (``train`` must be False; ``batch_size`` is forced to 1): a video's S seconds,
            S = ceil(duration) or ``max_seconds`` if smaller (the first seconds only; captions are
            all kept), in chunks of ``chunk_seconds`` consecutive seconds (None: one chunk), one item
            per chunk (length = sum over videos of ceil(S / chunk_seconds); only one chunk's frames
            are decoded at a time): ``video`` (S_c, C, T, H, W), S_c <= chunk_seconds, clip s
            (``num_frames`` every ``stride`` frames) centred on s + 0.5 s (kept inside the video),
            ``clip_times`` float32 (S_c,) = s + 0.5 (absolute seconds), ``chunk_index`` (long, 0 ..
            ``num_chunks`` - 1, in time order), ``num_chunks`` (long, the video's chunk count). The
            first chunk (``chunk_index`` 0) carries the video's text: ``captions`` (M str, every
            caption), ``caption_start_s``/``caption_end_s`` float32 (M,), ``alignable`` bool (M,)
            (null -> True); the other chunks carry them with M = 0. Batches have a leading
            dimension of 1.
        img_size: output height = width. Train: random resized crop (``scale``), flip with probability
            ``hflip`` (default 0: direction-sensitive labels). Eval: short side to img_size*256/224,
            centre crop. Frames are decoded at reduced size by the backend.
        train: training mode (shuffle, random crops, ``drop_last`` default True) or eval (fixed order,
            deterministic crops, every sample exactly once over all ranks).
        batch_size: per rank. num_workers: DataLoader workers (0 = in-process).
        rank, world_size: this process's share; ``seed``: shuffle and augmentation seed.
        backend: "auto" (the fastest that decodes here, see ``backends/choice.py``), "torchcodec",
            "decord" or "pyav"; a video the fast backend fails on is decoded by PyAV. The choice is
            ``loader.decoder`` (a ``Choice``: backend, how it was chosen, ``line()`` to log).
        decode_device: "cpu", or "cuda" (torchcodec's GPU decoder; transforms run there too; needs
            ``num_workers=0``: CUDA cannot be used from DataLoader worker processes).
        decode_once: a batch's caption items of one video are decoded in one call (the union of
            their frames, one open); False: item by item. The items are the same either way.
        max_failures: cap on distinct videos that fail to decode on this rank before
            ``TooManyFailuresError``: an int count, or a float in (0, 1) as a fraction of the split.
        failure_log_dir: where the per-rank ``decode_failures.rank{R}.jsonl`` goes (default: a temp dir);
            ``loader.failure_summary()`` reads it.
        text_transform: picklable ``list[str] -> LongTensor (n, L)`` tokenizer (fixed L), called in the
            dataset (DataLoader workers): items get ``text_tokens`` for their captions (caption: (K, L);
            per_second: (M, L), (0, L) on a video's later chunks; other samplers with ``with_text``:
            (1, L)).
        samples_per_video, num_captions, jitter_s: caption sampler only (above).
        group_by_video: caption training: shuffle videos, not items, so a video's samples_per_video
            clips are consecutive and meet in one global batch (negatives that differ only in time).
        only_alignable: caption sampler: captions whose ``alignable`` is False are neither sampled,
            evaluated nor neighbours (null counts as alignable). per_second always keeps all captions.
        max_seconds: per_second: clips for the first ``max_seconds`` seconds only (None = all).
        chunk_seconds: per_second: at most this many seconds (clips) per item (None = a whole video).

    Returns a :class:`ResumableDataLoader` yielding dicts ``{"video": float32 (B, C, T, H, W),
    "label": long (B,), "video_id": list[str], "sample_idx": long (B,)}`` (+ extras above). Its
    ``sampler`` is a :class:`ShardedSampler` with ``set_epoch(e)``, ``state_dict()``,
    ``load_state_dict(state)``; ``loader.set_epoch``/``state_dict``/``load_state_dict`` forward to it.
    Mid-epoch resume: save ``loader.state_dict()``, later ``load_state_dict(state)`` and
    ``set_epoch(state["epoch"])``; iteration yields exactly the samples not consumed yet.
    """
    decoder = resolve(backend, decode_device)
    if decode_device == "cuda" and num_workers > 0:
        raise ConfigError(
            f"data.decode_device=cuda decodes in the main process: set data.num_workers to 0 (got {num_workers})"
        )
    index = VideoIndex(index_path, root=root, split=split)
    frame_sampler = FrameSampler(
        kind=sampler,
        num_frames=num_frames,
        stride=stride,
        num_clips=num_clips,
        max_seconds=max_seconds,
        chunk_seconds=chunk_seconds,
    )
    if sampler == "per_second":
        batch_size = 1  # S_c and M vary from item to item
    transform = ClipTransform(img_size=img_size, train=train, scale=scale, hflip=hflip, num_crops=num_crops)
    if isinstance(max_failures, float) and 0 < max_failures < 1:
        cap = max(1, int(max_failures * len(index)))
    else:
        cap = int(max_failures)
    failures = FailureLog(cap, failure_log_dir, rank=rank)
    dataset = VideoDataset(
        index,
        frame_sampler,
        transform,
        train=train,
        seed=seed,
        backend=decoder.backend,
        decode_device=decoder.device,
        decode_once=decode_once,
        decode_resize=decode_resize,
        with_text=with_text,
        with_segments=with_segments,
        failures=failures,
        text_transform=text_transform,
        samples_per_video=samples_per_video,
        num_captions=num_captions,
        jitter_s=jitter_s,
        only_alignable=only_alignable,
    )
    drop_last = train if drop_last is None else drop_last
    group = samples_per_video if group_by_video and train and sampler == "caption" else 1
    shard = ShardedSampler(
        len(dataset),
        rank=rank,
        world_size=world_size,
        shuffle=train,
        seed=seed,
        drop_last=drop_last,
        group_size=group,
    )
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    loader = ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=shard,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=pin_memory and decode_device == "cpu",  # CUDA tensors cannot be pinned
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
    loader.decoder = decoder
    return loader
