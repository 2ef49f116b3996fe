"""The two-stage long-video baseline: a frozen clip encoder, a small temporal head trained on top.

What the literature did before end-to-end training (features pre-extracted from a short-clip model,
then a temporal model over them), here in the same tool and on the same data as ``long_video``: the
``data.num_frames`` frames sampled uniformly over the whole video are cut into consecutive clips of
``task.clip_frames``; the encoder (``model.*``, weights from ``model.pretrained``, e.g. a short-clip
classifier exported by ``scripts/export.py``) embeds every clip with all its tokens, frozen (no
gradient, eval mode, no token dropout, no optimizer state); a :class:`TemporalHead` (learned temporal
positions, ``head_depth`` Transformer blocks, mean pool, linear) classifies the sequence of clip
features. Evaluation: ``task.eval_num_frames`` frames (more clips; the head's temporal table is
resized), metric prefix ``{split}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from turbo_ds.config import TrainConfig
from turbo_ds.models.temporal_head import TemporalHead
from turbo_ds.models.vit import VideoViT
from turbo_ds.tasks.base import DataSpec, EvalSpec, MeanEvaluator, Task, TaskOutput, option_error
from turbo_ds.tasks.common import num_classes_in_index, topk_accuracy
from turbo_ds.tasks.registry import register_task


@dataclass
class TwoStageOptions:
    """``task.*`` keys of the long_video_two_stage task."""

    num_classes: int = 0
    """Number of activities (0 = read from ``data.index``)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (training only)."""
    clip_frames: int = 8
    """Frames per clip the frozen encoder embeds (its pretraining clip length); divides data.num_frames."""
    eval_num_frames: int = 0
    """Frames per video at evaluation (0 = ``data.num_frames``); a multiple of ``clip_frames``."""
    head_dim: int = 128
    """Width of the temporal head."""
    head_depth: int = 1
    """Transformer blocks of the temporal head (0 = none: the mean of the projected clip features)."""
    head_heads: int = 4
    """Attention heads of the temporal head."""

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise option_error("num_classes", self.num_classes, "must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise option_error("label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if self.clip_frames < 1:
            raise option_error("clip_frames", self.clip_frames, "must be >= 1")
        if self.eval_num_frames < 0:
            raise option_error("eval_num_frames", self.eval_num_frames, "must be >= 0 (0 = data.num_frames)")
        if self.head_dim < 1 or self.head_depth < 0 or self.head_heads < 1:
            raise option_error(
                "head_dim",
                (self.head_dim, self.head_depth, self.head_heads),
                "need dim, heads >= 1, depth >= 0",
            )
        if self.head_dim % self.head_heads:
            raise option_error("head_heads", self.head_heads, f"must divide head_dim {self.head_dim}")


def clips_of(video: torch.Tensor, clip_frames: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * K, C, clip_frames, H, W): K = T / clip_frames consecutive clips."""
    b, c, t, h, w = video.shape
    if t % clip_frames:
        raise ValueError(f"{t} frames do not split into clips of {clip_frames}")
    k = t // clip_frames
    return video.view(b, c, k, clip_frames, h, w).transpose(1, 2).reshape(b * k, c, clip_frames, h, w)


def frozen_encoder_config(cfg: TrainConfig, clip_frames: int) -> TrainConfig:
    """``cfg`` for building the clip encoder: clip-length input, no token dropout, no Partial-MAE."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, num_frames=clip_frames),
        model=dataclasses.replace(cfg.model, num_frames=None),
        token_dropout=dataclasses.replace(cfg.token_dropout, drop_ratio=0.0),
        pmae=dataclasses.replace(cfg.pmae, enabled=False),
    )


@register_task("long_video_two_stage")
class TwoStageLongVideoTask(Task):
    """Frozen :class:`VideoViT` clip encoder + trainable :class:`TemporalHead`."""

    video_encoder_prefix = "encoder."  # the frozen clip encoder; the trained head is "head."

    Options = TwoStageOptions
    headline = ("top1", "loss")

    def __init__(self, encoder: VideoViT, head: TemporalHead, options: TwoStageOptions, cfg: TrainConfig):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.options = options
        self.cfg = cfg
        self.num_classes = options.num_classes
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TwoStageLongVideoTask:
        from turbo_ds.tasks import build_model

        opts = cls.parse_options(cfg.task.options)
        t_train, t_eval = cfg.data.num_frames, opts.eval_num_frames or cfg.data.num_frames
        for key, t in (("clip_frames", t_train), ("clip_frames", t_eval)):
            if t % opts.clip_frames:
                raise option_error(
                    key, opts.clip_frames, f"must divide data.num_frames and eval_num_frames ({t})"
                )
        if not cfg.model.pretrained:
            print(
                "[turbo_ds] long_video_two_stage: model.pretrained is not set, the frozen encoder keeps "
                "its random initial weights",
                flush=True,
            )
        opts = dataclasses.replace(
            opts, num_classes=opts.num_classes or num_classes_in_index(cfg), eval_num_frames=t_eval
        )
        encoder = build_model(frozen_encoder_config(cfg, opts.clip_frames), num_classes=0).encoder
        head = TemporalHead(
            encoder.cfg.num_features,
            t_train // opts.clip_frames,
            opts.num_classes,
            opts.head_dim,
            opts.head_depth,
            opts.head_heads,
        )
        return cls(encoder, head, opts, cfg)

    def train(self, mode: bool = True) -> TwoStageLongVideoTask:
        super().train(mode)
        self.encoder.eval()  # frozen: no token dropout, no drop path, whatever the loop asks
        return self

    def set_drop_ratio(self, drop_ratio: float) -> None:
        """The frozen encoder embeds every token: token dropout does not apply."""

    # ---- data and evaluation ---------------------------------------------------------------------
    def train_data(self) -> DataSpec:
        return DataSpec(sampler="uniform", train=True)

    def eval_specs(self, split: str | None = None) -> list[EvalSpec]:
        data = DataSpec(sampler="uniform", train=False, kwargs={"num_frames": self.options.eval_num_frames})
        if split is not None:
            return [EvalSpec(split, data, MeanEvaluator, name="two-stage")]
        d = self.cfg.data
        specs = [EvalSpec(d.val_split, data, MeanEvaluator, name="two-stage")] if d.val_split else []
        if d.test_split and d.test_split != d.val_split:
            specs.append(EvalSpec(d.test_split, data, MeanEvaluator, during_training=False, name="two-stage"))
        return specs

    def summary(self, metrics: dict[str, float], prefix: str) -> str | None:
        if f"{prefix}/top1" not in metrics:
            return None
        return (
            f"{prefix} top-1 {metrics[f'{prefix}/top1']:.2f}% (chance {100.0 / max(1, self.num_classes):.1f}%) "
            f"on {int(metrics.get(f'{prefix}/num_samples', 0))} videos x {self.options.eval_num_frames} frames "
            f"(two-stage: frozen encoder on clips of {self.options.clip_frames} frames + temporal head)"
        )

    def tracking_params(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "head_trainable_parameters": sum(p.numel() for p in self.head.parameters() if p.requires_grad),
        }

    # ---- forward ---------------------------------------------------------------------------------
    @torch.no_grad()
    def clip_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, K, F) pooled features of the K consecutive clips (frozen encoder)."""
        b = video.shape[0]
        feats = self.encoder(clips_of(video, self.options.clip_frames), return_features=True).pooled
        return feats.view(b, -1, feats.shape[-1])

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        video, labels = batch["video"], batch["label"]
        logits = self.head(self.clip_features(video)).float()
        smoothing = self.options.label_smoothing if self.training else 0.0
        cls_loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        with torch.no_grad():
            metrics = topk_accuracy(logits.detach(), labels, ks=(1, 5))
        return TaskOutput(
            loss=cls_loss,
            losses={"cls_loss": cls_loss},
            metrics=metrics,
            batch_size=int(labels.shape[0]),
            extras={"logits": logits.detach()},
        )
