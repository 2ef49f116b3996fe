"""The loop's data: the loader a task asks for, batches that never move the RNGs, the training stream
epoch after epoch, and the report of videos that failed to decode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from turbo_ds.config import TrainConfig
from turbo_ds.loop.rng import rng_untouched


def build_loader(cfg: TrainConfig, spec, split: str, rank: int, world_size: int, output_dir: Path):
    """The loader a task's :class:`~turbo_ds.tasks.DataSpec` asks for, on this rank's share of ``split``."""
    from turbo_ds.data import build_dataloader

    d = cfg.data
    if spec.batch_size is not None:
        batch_size = spec.batch_size
    elif spec.train:
        batch_size = cfg.optim.micro_batch_size
    else:
        batch_size = d.eval_batch_size or cfg.optim.micro_batch_size
    kwargs = dict(
        root=spec.root if spec.index else d.root,
        split=split,
        sampler=spec.sampler,
        train=spec.train,
        batch_size=batch_size,
        num_frames=d.num_frames,
        stride=d.frame_stride,
        img_size=d.img_size,
        hflip=d.hflip if spec.train else 0.0,
        scale=tuple(d.crop_scale),
        num_workers=d.num_workers,
        rank=rank,
        world_size=world_size,
        seed=cfg.seed,
        backend=d.backend,
        decode_device=d.decode_device,
        decode_once=d.decode_once,
        max_failures=d.max_failures,
        failure_log_dir=output_dir / "data_failures",
        pin_memory=torch.cuda.is_available(),
    )
    kwargs.update(spec.kwargs)
    return build_dataloader(spec.index or d.index, **kwargs)


def iterate(loader) -> Iterator[dict[str, Any]]:
    """Batches of ``loader``; fetching them never moves the global RNGs (a DataLoader iterator draws
    its base seed lazily, at the first ``next``), so a resumed run draws exactly what the original did."""
    it = iter(loader)
    while True:
        try:
            with rng_untouched():
                batch = next(it)
        except StopIteration:
            return
        yield batch


class EpochBatches:
    """The training loader's batches, epoch after epoch from ``epoch`` (what a checkpoint stores).

    ``end_of_epoch(epoch)`` runs between two epochs, on every rank at the same micro step (the training
    sampler gives every rank the same number of batches), so it may run collectives. Nothing is fetched
    before the first ``next``.
    """

    def __init__(self, loader, end_of_epoch: Callable[[int], None], epoch: int = 0):
        self.loader, self.end_of_epoch, self.epoch = loader, end_of_epoch, epoch
        self._batches: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._batches is None:
                self.loader.set_epoch(self.epoch)
                self._batches = iterate(self.loader)
            batch = next(self._batches, None)
            if batch is not None:
                return batch
            self._batches = None
            self.end_of_epoch(self.epoch)
            self.epoch += 1

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None


def report_data_failures(engine, tracker, loaders, step: int, final: bool, log: Callable[[str], None]) -> int:
    """Rank 0 prints how many distinct videos failed to decode so far on all ranks, in training and
    evaluation (nothing at an epoch end without failures), and logs it as ``data/failed_videos``;
    at the end of the run it also writes every rank's entries to
    ``data_failures/decode_failures.jsonl`` and logs that file as an artifact. Collective."""
    from turbo_ds.data import errors

    # The rank's loaders share one file today; a set in case a task points one elsewhere.
    files = sorted({str(loader.dataset.failures.path) for loader in loaders})
    # The entries are few (max_failures caps them), so every report gathers them whole.
    parts = engine.all_gather_object(errors.read_entries(files))
    entries = [{"rank": r, **e} for r, part in enumerate(parts) for e in part]
    videos, occurrences = {e["path"] for e in entries}, len(entries)
    if not engine.is_rank_0:
        return len(videos)
    where = Path(files[0]).parent
    tracker.log_metrics({"data/failed_videos": float(len(videos))}, step=step)
    if videos or final:
        log(errors.summary_line(len(videos), occurrences, f"{where}/", final))
    if final and videos:
        merged = errors.write_entries(entries, where / "decode_failures.jsonl")
        tracker.log_artifact(merged, "data_failures")
    return len(videos)
