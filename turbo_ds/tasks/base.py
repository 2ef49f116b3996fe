"""The task contract: what the loop needs to know about an objective, and nothing more.

A task is an ``nn.Module`` (what the DeepSpeed engine wraps) that maps a batch to a :class:`TaskOutput`
(named losses whose sum is ``loss``, plus per-batch metrics), and that says:

- what its batches need from the data (:meth:`Task.train_data`, :meth:`Task.eval_specs`: sampler kind,
  text tokens, segments, another index...), as :class:`DataSpec` objects the loop turns into loaders;
- how it evaluates a split: an :class:`Evaluator` consumes the outputs on every rank and reduces across
  ranks (a weighted mean for classification; the gathered embeddings of the whole split for retrieval);
- which metrics are its headline (:meth:`Task.summary`, the line printed at the end of a run;
  :meth:`Task.quality_metrics` for comparisons of runs);
- what the tools around the loop need to know of it: where its video encoder sits (export), whether
  the memory planner models all its activations (:attr:`Task.plan_covers_activations`).

Options (the ``task:`` section of a config, beyond ``name`` and ``mae_weight``) are a dataclass per task
(``Task.Options``), validated like every other config section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from turbo_ds.models.outputs import Output


class TaskOutput(Output):
    """loss: scalar to back-propagate, the sum of ``losses``;
    losses: named weighted scalar losses, e.g. ``{"cls_loss": ..., "mae_loss": ...}``;
    metrics: named per-batch means (e.g. ``top1`` in percent), averaged by the loop weighted by
    ``batch_size``; batch_size: samples in this batch; extras: anything else evaluators may want
    (logits, embeddings, token counts)."""

    def __init__(
        self,
        loss: torch.Tensor,
        losses: dict[str, torch.Tensor],
        metrics: dict[str, torch.Tensor] | None = None,
        batch_size: int = 0,
        extras: dict[str, Any] | None = None,
    ):
        super().__init__(
            loss=loss, losses=losses, metrics=metrics or {}, batch_size=batch_size, extras=extras or {}
        )


@dataclass
class DataSpec:
    """One loader a task needs: ``turbo_ds.data.build_dataloader`` arguments on top of the shared
    ``data.*`` settings (frames, stride, size, workers, seed, backend)."""

    sampler: str = "dense"
    """dense, uniform, caption, multiview, per_second (see build_dataloader)."""
    train: bool = True
    """Training mode (shuffled, random crops) or evaluation (every sample once, deterministic)."""
    batch_size: int | None = None
    """Per rank; None = ``optim.micro_batch_size`` (train) or ``data.eval_batch_size`` (eval)."""
    index: str | None = None
    """Another index than ``data.index`` (e.g. an HTM-Align index); None = ``data.index``."""
    root: str | None = None
    """Video root of ``index``; None = the index's folder (or ``data.root`` for ``data.index``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other build_dataloader argument (text_transform, num_captions, num_clips...)."""


class Comm(Protocol):
    """What evaluators may use to reduce across ranks (the engine provides it)."""

    world_size: int

    def all_gather_object(self, obj: Any) -> list[Any]: ...


class Evaluator(Protocol):
    """Consumes a split's outputs on every rank, then reduces across ranks.

    ``update`` is called for every batch this rank evaluated (padding batches excluded); ``compute``
    is called on every rank (it may communicate) and returns metrics without the split prefix.
    """

    def update(self, batch: dict[str, Any], out: TaskOutput) -> None: ...

    def compute(self, comm: Comm) -> dict[str, float]: ...


class MeanEvaluator:
    """``loss``, every named loss and metric averaged over all samples of all ranks (weighted by
    ``batch_size``), plus ``num_samples``."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0.0

    def update(self, batch: dict[str, Any], out: TaskOutput) -> None:
        bs = float(out.batch_size)
        for k, v in {"loss": out.loss, **out.losses, **out.metrics}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach()) * bs
        self.count += bs

    def compute(self, comm: Comm) -> dict[str, float]:
        gathered = comm.all_gather_object((self.sums, self.count))
        total = sum(c for _, c in gathered)
        keys = sorted({k for s, _ in gathered for k in s})
        out = {k: sum(s.get(k, 0.0) for s, _ in gathered) / max(total, 1.0) for k in keys}
        out["num_samples"] = total
        return out


@dataclass
class EvalSpec:
    """One evaluation: which split of which index, loaded how, scored by which evaluator."""

    split: str
    data: DataSpec
    make_evaluator: Callable[[], Evaluator]
    prefix: str | None = None
    """Metric prefix (``{prefix}/t2v_r1``); None = the split's name."""
    during_training: bool = True
    """Run every ``train.eval_every`` steps (else only at the end of training)."""
    name: str = "eval"
    """What it measures, for log lines (``retrieval``, ``alignment``, ``multi-view``...)."""
    batch_keys: dict[str, Any] = field(default_factory=dict)
    """Added to every batch of this evaluation: what the task's forward needs to know about it
    (e.g. ``{"eval_mode": "chunked"}``), so one task can serve several evaluations of one split."""

    @property
    def metric_prefix(self) -> str:
        return self.prefix or self.split


def option_error(key: str, value: Any, why: str):
    """The ConfigError of a bad ``task.<key>`` option (as every config section words its errors)."""
    from turbo_ds.config import ConfigError

    return ConfigError(f"config key 'task.{key}' = {value!r}: {why}")


@dataclass
class NoOptions:
    """A task without options of its own."""


class Task(nn.Module):
    """Base class of every task. Subclasses set ``Options`` (a dataclass, the ``task.*`` keys) and
    implement ``from_config``, ``forward``, ``train_data`` and ``eval_specs``."""

    Options: ClassVar[type] = NoOptions
    headline: ClassVar[tuple[str, ...]] = ("loss",)
    """Metric names (without the split prefix) logged at every evaluation."""
    video_encoder_prefix: ClassVar[str] = "model.encoder."
    """Where the task's video encoder (a VideoViT) sits in its state dict: what ``scripts/export.py``
    exports as the encoder and ``scripts/eval.py --weights`` puts back."""
    weight_options: ClassVar[tuple[str, ...]] = ()
    """Options naming weight files (e.g. a text tower checkpoint) that evaluation skips: the
    checkpoint being evaluated holds those weights."""
    plan_covers_activations: ClassVar[bool] = False
    """The memory planner's activations (the video encoder's and the Partial-MAE decoder's) are all the
    task keeps for backward. False (a text tower, a head over clip features...): the plan says the
    rest is not modelled."""

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Any:
        """``task.*`` keys -> the task's Options dataclass, type- and range-checked (ConfigError)."""
        from turbo_ds.config import build_section

        return build_section(cls.Options, options, "task.")

    @classmethod
    def from_config(cls, cfg) -> Task:
        raise NotImplementedError

    def train_data(self) -> DataSpec:
        raise NotImplementedError

    def eval_specs(self, split: str | None = None) -> list[EvalSpec]:
        """The configured evaluations (``split`` None), or those that make sense for ``split``
        (``scripts/eval.py --split S``)."""
        return []

    def summary(self, metrics: dict[str, float], prefix: str) -> str | None:
        """The headline metrics of ``prefix``'s evaluation, one line or several (None: nothing to say)."""
        parts = [f"{k} {metrics[f'{prefix}/{k}']:.4g}" for k in self.headline if f"{prefix}/{k}" in metrics]
        return f"{prefix}: " + ", ".join(parts) if parts else None

    @classmethod
    def quality_metrics(cls) -> tuple[str, ...]:
        """The headline less its losses: what a comparison of runs leads with (``scripts/compare.py``,
        for a run logged without the ``turbo_ds.headline`` tag)."""
        return tuple(k for k in cls.headline if k != "loss" and not k.endswith("_loss"))

    def tracking_params(self) -> dict[str, Any]:
        """Extra MLflow params (e.g. the number of classes)."""
        return {}

    def set_drop_ratio(self, drop_ratio: float) -> None:
        """Training-time token dropout of every video encoder in the task."""
        from turbo_ds.models import VideoViT

        for m in self.modules():
            if isinstance(m, VideoViT):
                m.set_drop_ratio(drop_ratio)

    def options_dict(self) -> dict[str, Any]:
        """The resolved options (defaults filled in), for the run's saved config."""
        opts = getattr(self, "options", None)
        return dataclasses.asdict(opts) if opts is not None and dataclasses.is_dataclass(opts) else {}
