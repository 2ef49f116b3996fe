"""One run reduced to the numbers the comparison needs: headline metrics, throughput, memory, time axis.

Definitions (also in the report and docs/compare.md):

- training time: cumulative seconds in training steps (no evaluation, no checkpointing), rebuilt from
  ``train/step_time_s`` (the mean step time of each logging window) times the steps of that window;
  for a run that was never resumed this equals its ``train/time_s``. Without step times: the last
  ``train/time_s``.
- clips/s: ``train/avg_clips_per_s`` (all training clips / training time, logged at the end), else the
  mean of the logged ``train/clips_per_s`` windows (a run that stopped early).
- tokens/s: the mean of the logged ``train/tokens_per_s`` windows.
- peak memory: the maximum of ``train/peak_mem_mb`` over the run (the largest rank; the CUDA allocator's
  peak on GPU), else ``memory/measured_peak_mb`` (the first step, measured).
- step memory: ``memory/measured_peak_mb``, the tensors of the first training step (what token dropout
  and checkpointing change). On the CPU ``train/peak_mem_mb`` is the process's resident set, mostly the
  libraries, so there the step memory is the one that shows Turbo's saving.
- data wait: the mean of the logged ``train/data_wait_frac`` windows (the share of step time the slowest
  rank waited for its batches), the first window (worker start-up) left out when there are others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from turbo_ds.compare.runs import Run
from turbo_ds.tracking import HEADLINE_TAG, TASK_TAG

DROP_RATIO = "token_dropout.drop_ratio"
NON_EVAL_PREFIXES = ("train", "memory", "data", "system")


def eval_keys(run: Run) -> list[str]:
    """The run's evaluation metrics (``{prefix}/{name}``), counts such as ``val/num_samples`` left out."""
    keys = []
    for key in sorted(run.metrics):
        prefix, _, name = key.partition("/")
        if name and prefix not in NON_EVAL_PREFIXES and not name.startswith("num_") and "_num_" not in name:
            keys.append(key)
    return keys


def task_quality_metrics(task: str) -> tuple[str, ...] | None:
    """What the registered task ``task`` reports as quality (:meth:`turbo_ds.tasks.Task.quality_metrics`);
    None where that cannot be asked here: an unknown name, an import path (a store's text is no reason
    to import a module), or no torch (compare itself needs none: only runs without the headline tag
    ask)."""
    if not task or ":" in task:
        return None
    try:
        from turbo_ds.config import ConfigError
        from turbo_ds.tasks import get_task_class
    except ImportError:
        return None
    try:
        return get_task_class(task).quality_metrics()
    except (ConfigError, ImportError):
        return None


def headline_names(run: Run) -> list[str]:
    """The ``turbo_ds.headline`` tag; else (a run logged before the tag existed) the task's quality
    metrics on every eval prefix logged (by metric, then prefix); else every evaluation metric."""
    if tag := run.tags.get(HEADLINE_TAG, "").strip():
        return [k.strip() for k in tag.split(",") if k.strip()]
    evals = eval_keys(run)
    names = task_quality_metrics(run.tags.get(TASK_TAG) or run.params.get("task.name", ""))
    if names is not None:
        found = [k for k in evals if k.partition("/")[2] in names]
        return sorted(found, key=lambda k: (names.index(k.partition("/")[2]), k))
    return evals


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclass
class TimeAxis:
    """Cumulative training seconds at each logged training step (a piecewise-linear step -> time map)."""

    steps: list[int]
    seconds: list[float]

    def at(self, step: int) -> float:
        """The training time at ``step``, linear within a logging window."""
        import numpy as np

        return float(np.interp(step, self.steps, self.seconds))


def time_axis(run: Run) -> TimeAxis | None:
    """Rebuilt from ``train/step_time_s`` x the window's steps (the steps since the previous logged one;
    the first window is at most ``train.log_every`` steps long, for a run that starts from a checkpoint)."""
    points = run.history("train/step_time_s")
    if not points:
        return None
    log_every = _float(run.params.get("train.log_every"))
    first = points[0][0]
    start = first - int(min(first, log_every)) if log_every else 0
    steps, seconds = [start], [0.0]
    for step, step_time in points:
        seconds.append(seconds[-1] + step_time * (step - steps[-1]))
        steps.append(step)
    return TimeAxis(steps, seconds)


@dataclass
class RunSummary:
    run: Run
    headline: list[str]
    train_time_s: float | None
    clips_per_s: float | None
    tokens_per_s: float | None
    peak_mem_mb: float | None
    step_mem_mb: float | None  # the first training step's measured tensor peak (memory/measured_peak_mb)
    data_wait_frac: float | None  # the share of step time spent waiting for data (train/data_wait_frac)
    drop_ratio: float | None
    axis: TimeAxis | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def data_wait_pct(self) -> float | None:
        return None if self.data_wait_frac is None else 100.0 * self.data_wait_frac

    @property
    def has_training_data(self) -> bool:
        return bool(self.run.history("train/loss")) or self.clips_per_s is not None


def _mean(points: list[tuple[int, float]]) -> float | None:
    values = [v for _, v in points if math.isfinite(v)]
    return sum(values) / len(values) if values else None


def summarize(run: Run) -> RunSummary:
    axis = time_axis(run)
    train_time = axis.seconds[-1] if axis else run.metrics.get("train/time_s")
    clips = run.metrics.get("train/avg_clips_per_s")
    if clips is None:
        clips = _mean(run.history("train/clips_per_s"))
    peaks = [v for _, v in run.history("train/peak_mem_mb") if math.isfinite(v)]
    peak = max(peaks) if peaks else run.metrics.get("memory/measured_peak_mb")
    waits = run.history("train/data_wait_frac")
    summary = RunSummary(
        run=run,
        headline=headline_names(run),
        train_time_s=train_time,
        clips_per_s=clips,
        tokens_per_s=_mean(run.history("train/tokens_per_s")),
        peak_mem_mb=peak,
        step_mem_mb=run.metrics.get("memory/measured_peak_mb"),
        data_wait_frac=_mean(waits[1:] if len(waits) > 1 else waits),
        drop_ratio=_float(run.params.get(DROP_RATIO)),
        axis=axis,
    )
    if not run.metrics:
        summary.notes.append("no metrics logged")
    elif not summary.has_training_data:
        summary.notes.append("no training metrics logged")
    return summary
