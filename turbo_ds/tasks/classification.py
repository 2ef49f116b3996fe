"""Action classification: cross-entropy (optional label smoothing) + ``mae_weight`` x Partial-MAE.

Evaluation: the val split with one centre clip, the test split with ``data.test_clips`` x
``data.test_crops`` views whose softmax is averaged; top-1 / top-5 against chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from turbo_ds.config import ConfigError, TrainConfig
from turbo_ds.models import TurboModel
from turbo_ds.tasks.base import DataSpec, EvalSpec, MeanEvaluator, Task, TaskOutput
from turbo_ds.tasks.common import (
    add_mae_loss,
    average_views,
    num_classes_in_index,
    tokens_per_clip,
    topk_accuracy,
)
from turbo_ds.tasks.registry import register_task


@dataclass
class ClassificationOptions:
    """``task.*`` keys of the classification task."""

    num_classes: int = 0
    """Number of labels (0 = read from ``data.index``)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (training only)."""

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise ConfigError(f"config key 'task.num_classes' = {self.num_classes!r}: must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"config key 'task.label_smoothing' = {self.label_smoothing!r}: must be in [0, 1)"
            )


@register_task("classification")
class ClassificationTask(Task):
    """Wraps a :class:`TurboModel`. Training: token dropout + Partial-MAE; eval: all tokens, and a
    ``video`` of shape (B, V, C, T, H, W) (multi-view test) is scored by averaging softmax over views."""

    Options = ClassificationOptions
    headline = ("top1", "top5", "loss")
    plan_covers_activations = True  # the encoder (with its head) and the decoder: what the planner models

    def __init__(
        self,
        model: TurboModel,
        label_smoothing: float = 0.0,
        mae_weight: float = 1.0,
        cfg: TrainConfig | None = None,
    ):
        super().__init__()
        self.model = model
        self.label_smoothing = float(label_smoothing)
        self.mae_weight = float(mae_weight)
        self.cfg = cfg
        head = model.encoder.head
        self.num_classes = int(head.out_features) if head is not None else 0
        self.options = ClassificationOptions(self.num_classes, self.label_smoothing)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ClassificationTask:
        from turbo_ds.tasks import build_model

        opts = cls.parse_options(cfg.task.options)
        num_classes = opts.num_classes or num_classes_in_index(cfg)
        model = build_model(cfg, num_classes=num_classes)
        return cls(model, label_smoothing=opts.label_smoothing, mae_weight=cfg.task.mae_weight, cfg=cfg)

    # ---- data and evaluation ---------------------------------------------------------------------
    def train_data(self) -> DataSpec:
        return DataSpec(sampler="dense", train=True)

    def eval_specs(self, split: str | None = None) -> list[EvalSpec]:
        d = self.cfg.data
        multiview = DataSpec(
            sampler="multiview", train=False, kwargs={"num_clips": d.test_clips, "num_crops": d.test_crops}
        )
        if split is not None:  # scripts/eval.py: the multi-view protocol on any split
            return [EvalSpec(split, multiview, MeanEvaluator, name="multi-view")]
        specs = []
        if d.val_split:
            specs.append(
                EvalSpec(d.val_split, DataSpec(sampler="dense", train=False), MeanEvaluator, prefix="val")
            )
        if d.test_split:
            specs.append(
                EvalSpec(d.test_split, multiview, MeanEvaluator, prefix="test", during_training=False)
            )
        return specs

    def summary(self, metrics: dict[str, float], prefix: str) -> str | None:
        if f"{prefix}/top1" not in metrics:
            return None
        chance = 100.0 / max(1, self.num_classes)
        return (
            f"{prefix} top-1 {metrics[f'{prefix}/top1']:.2f}% top-5 {metrics.get(f'{prefix}/top5', float('nan')):.2f}% "
            f"(chance {chance:.1f}%) on {int(metrics.get(f'{prefix}/num_samples', 0))} clips"
        )

    def tracking_params(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        video, labels = batch["video"], batch["label"]
        views = 1
        if video.ndim == 6:  # (B, V, C, T, H, W): multi-view evaluation
            b, views = video.shape[:2]
            video = video.flatten(0, 1)
        out = self.model(video)
        logits = out.logits.float()
        if views > 1:
            logits = average_views(logits, views)
        cls_loss = F.cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing if self.training else 0.0
        )
        losses = {"cls_loss": cls_loss}
        metrics: dict[str, torch.Tensor] = {}
        add_mae_loss(losses, metrics, out, self.mae_weight)
        loss = sum(losses.values())
        with torch.no_grad():
            metrics.update(topk_accuracy(logits.detach(), labels))
        return TaskOutput(
            loss=loss,
            losses=losses,
            metrics=metrics,
            batch_size=int(labels.shape[0]),
            extras={"logits": logits.detach(), "tokens_per_clip": tokens_per_clip(out) * views},
        )
