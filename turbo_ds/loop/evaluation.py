"""Evaluation: one task evaluation over a split (:func:`evaluate`), the training's evaluations
(:class:`Evaluations`), one split's evaluations for ``scripts/eval.py`` (:func:`evaluate_split`), and the
headline names and summary lines both print."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from turbo_ds.config import TrainConfig
from turbo_ds.loop.data import build_loader, iterate
from turbo_ds.loop.progress import progress as progress_bar
from turbo_ds.loop.rng import rng_untouched


@torch.no_grad()  # no autograd graph: evaluation memory is that of inference
def evaluate(
    engine,
    loader,
    evaluator=None,
    max_batches: int | None = None,
    prefix: str = "val",
    batch_keys: dict[str, Any] | None = None,
    heartbeat: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Run the task on every batch of this rank's share of a split (with ``batch_keys`` added to each,
    see ``EvalSpec.batch_keys``), feed ``evaluator`` (default: a weighted mean of losses and metrics)
    and return its cross-rank result as ``{prefix}/name``. ``progress``: a bar on rank 0.

    All ranks run the same number of forwards (ZeRO-3 gathers parameters collectively): a rank whose
    share is exhausted repeats its last batch, and that output is not given to the evaluator.
    ``heartbeat(what)`` is called before every batch (see :class:`~turbo_ds.loop.watchdog.StallWatchdog`).
    """
    from turbo_ds.tasks.base import MeanEvaluator

    evaluator = evaluator if evaluator is not None else MeanEvaluator()
    was_training = engine.ds.training
    engine.eval()
    n_local = len(loader) if max_batches is None else min(len(loader), max_batches)
    n_batches = int(engine.all_reduce_max(torch.tensor(float(n_local))).item())
    last = None
    it = iterate(loader)
    steps: Iterable[int] = range(n_batches)
    if progress and engine.is_rank_0 and n_batches > 1:
        steps = progress_bar(steps, desc=f"eval {prefix}", unit="batch", leave=False)
    with rng_untouched():
        for i in steps:
            if heartbeat is not None:
                heartbeat(f"evaluation '{prefix}' batch {i + 1} of {n_batches} (data, forward, collectives)")
            batch = next(it, None) if i < n_local else None
            padding = batch is None
            if padding:
                batch = last
            if batch is None:  # this rank has no samples at all: nothing to run collectively with
                continue
            last = batch
            out = engine(engine.to_device({**batch, **(batch_keys or {})}))
            if not padding:
                evaluator.update(batch, out)
    result = {f"{prefix}/{k}": float(v) for k, v in evaluator.compute(engine).items()}
    engine.train(was_training)
    return result


def headline_metrics(specs, headline: Sequence[str], available: dict[str, float] | None = None) -> list[str]:
    """Full names of a task's ``headline`` metrics in the evaluations ``specs`` (``val/top1``,
    ``test/top1``...), what reports compare runs by; with ``available``, only those it holds."""
    prefixes = dict.fromkeys(spec.metric_prefix for spec in specs)
    names = [f"{p}/{k}" for p in prefixes for k in headline]
    return names if available is None else [n for n in names if n in available]


def summary_lines(task, metrics: dict[str, float], prefixes: Iterable[str]) -> list[str]:
    """The task's summary lines of each evaluation prefix (each once, in order; no empty lines)."""
    return [
        line
        for p in dict.fromkeys(prefixes)
        for line in (task.summary(metrics, p) or "").splitlines()
        if line
    ]


class Evaluations:
    """The task's evaluations during and at the end of training: their loaders (built at the first
    evaluation, kept for the next), when the next is due, and the names and lines they report."""

    def __init__(self, task, cfg: TrainConfig, engine, out_dir: Path, heartbeat: Callable[[str], None]):
        self.task, self.cfg, self.engine, self.out_dir, self.heartbeat = task, cfg, engine, out_dir, heartbeat
        self.specs = task.eval_specs()
        self._loaders: dict[int, Any] = {}

    @property
    def loaders(self) -> list:
        """The evaluation loaders built so far."""
        return list(self._loaders.values())

    def due(self, step: int) -> bool:
        """An evaluation during training after ``step`` (the final one is :meth:`run`'s at the end)."""
        every = self.cfg.train.eval_every
        return step < self.cfg.train.max_steps and bool(every) and step % every == 0

    def run(self, during_training: bool) -> dict[str, float]:
        """Every evaluation of the task (only those marked ``during_training`` mid-run)."""
        metrics: dict[str, float] = {}
        for i, spec in enumerate(self.specs):
            if during_training and not spec.during_training:
                continue
            metrics.update(
                evaluate(
                    self.engine,
                    self._loader(i, spec),
                    spec.make_evaluator(),
                    self.cfg.train.eval_max_batches,
                    prefix=spec.metric_prefix,
                    batch_keys=spec.batch_keys,
                    heartbeat=self.heartbeat,
                    progress=self.cfg.train.progress_bar,
                )
            )
        return metrics

    def _loader(self, i: int, spec):
        if i not in self._loaders:
            rank, world = self.engine.rank, self.engine.world_size
            self._loaders[i] = build_loader(self.cfg, spec.data, spec.split, rank, world, self.out_dir)
        return self._loaders[i]

    def headline_metrics(self, available: dict[str, float] | None = None) -> list[str]:
        return headline_metrics(self.specs, self.task.headline, available)

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        return summary_lines(self.task, metrics, (spec.metric_prefix for spec in self.specs))


def evaluate_split(
    engine, task, cfg: TrainConfig, split: str, specs, out_dir: Path
) -> tuple[dict[str, float], list[str]]:
    """The metrics of every evaluation of ``split`` (``scripts/eval.py``) and the task's summary lines
    of them. One evaluation: ``eval_{split}/...``; several that name their own prefix (long_video's
    modes): ``eval_{their prefix}/...``, so that none overwrites another."""
    prefixes = [f"eval_{s.metric_prefix}" if len(specs) > 1 and s.prefix else f"eval_{split}" for s in specs]
    metrics: dict[str, float] = {}
    for spec, prefix in zip(specs, prefixes, strict=True):
        loader = build_loader(cfg, spec.data, spec.split, engine.rank, engine.world_size, out_dir)
        metrics.update(
            evaluate(
                engine,
                loader,
                spec.make_evaluator(),
                prefix=prefix,
                batch_keys=spec.batch_keys,
                progress=cfg.train.progress_bar,
            )
        )
        loader.close()
    return metrics, summary_lines(task, metrics, prefixes)
