"""Action classification: cross-entropy (optional label smoothing) + ``mae_weight`` x Partial-MAE."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from turbo_ds.models import TurboModel
from turbo_ds.tasks.base import TaskOutput


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, torch.Tensor]:
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    maxk = min(max(ks), logits.shape[-1])
    pred = logits.topk(maxk, dim=-1).indices
    hit = pred.eq(labels[:, None])
    return {f"top{k}": hit[:, : min(k, maxk)].any(dim=1).float().mean() * 100.0 for k in ks}


class ClassificationTask(nn.Module):
    """Wraps a :class:`TurboModel`. Training: token dropout + Partial-MAE; eval: all tokens, and a
    ``video`` of shape (B, V, C, T, H, W) (multi-view test) is scored by averaging softmax over views."""

    def __init__(self, model: TurboModel, label_smoothing: float = 0.0, mae_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.label_smoothing = float(label_smoothing)
        self.mae_weight = float(mae_weight)

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        video, labels = batch["video"], batch["label"]
        views = 1
        if video.ndim == 6:  # (B, V, C, T, H, W): multi-view evaluation
            b, views = video.shape[:2]
            video = video.flatten(0, 1)
        out = self.model(video)
        logits = out.logits.float()
        if views > 1:
            probs = logits.softmax(dim=-1).view(b, views, -1).mean(dim=1)
            logits = probs.clamp_min(1e-12).log()
        cls_loss = F.cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing if self.training else 0.0
        )
        losses = {"cls_loss": cls_loss}
        metrics: dict[str, torch.Tensor] = {}
        if out.mae_loss is not None and self.mae_weight > 0:
            losses["mae_loss"] = self.mae_weight * out.mae_loss.float()
            metrics["mae_loss_unweighted"] = out.mae_loss.detach().float()
        loss = sum(losses.values())
        with torch.no_grad():
            metrics.update(topk_accuracy(logits.detach(), labels))
            n_tokens = (
                out.keep_idx.shape[1]
                if out.keep_idx is not None
                else (out.tokens.shape[1] if out.tokens is not None else 0)
            )
        return TaskOutput(
            loss=loss,
            losses=losses,
            metrics=metrics,
            batch_size=int(labels.shape[0]),
            extras={"logits": logits.detach(), "tokens_per_clip": int(n_tokens) * views},
        )
