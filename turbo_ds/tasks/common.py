"""What every task uses: accuracy, the class count of an index, view averaging, tokens per clip, and
the Partial-MAE term mixed into a task's losses (one rule for every task)."""

from __future__ import annotations

import torch

from turbo_ds.config import TrainConfig


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, torch.Tensor]:
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    maxk = min(max(ks), logits.shape[-1])
    pred = logits.topk(maxk, dim=-1).indices
    hit = pred.eq(labels[:, None])
    return {f"top{k}": hit[:, : min(k, maxk)].any(dim=1).float().mean() * 100.0 for k in ks}


def num_classes_in_index(cfg: TrainConfig) -> int:
    """The label count of ``data.index`` (what ``task.num_classes: 0`` means)."""
    from turbo_ds.data import VideoIndex

    return int(VideoIndex(cfg.data.index, root=cfg.data.root).num_classes)


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(B * V, K) logits -> (B, K) log of the softmax averaged over the V views of each sample."""
    probs = logits.float().softmax(dim=-1).view(-1, views, logits.shape[-1]).mean(dim=1)
    return probs.clamp_min(1e-12).log()


def tokens_per_clip(out) -> int:
    """Patch tokens the encoder processed per clip (kept tokens under token dropout)."""
    if out.keep_idx is not None:
        return int(out.keep_idx.shape[1])
    return int(out.tokens.shape[1]) if out.tokens is not None else 0


def add_mae_loss(
    losses: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor], out, mae_weight: float
) -> None:
    """``losses["mae_loss"]`` = ``mae_weight`` x the model's Partial-MAE loss, and its unweighted value in
    ``metrics``; nothing when there is none (evaluation, nothing dropped) or the weight is 0."""
    if out.mae_loss is not None and mae_weight > 0:
        losses["mae_loss"] = mae_weight * out.mae_loss.float()
        metrics["mae_loss_unweighted"] = out.mae_loss.detach().float()
