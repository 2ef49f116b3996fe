"""Long-video activity classification, end to end (Turbo's Breakfast / COIN setup).

Training: ``data.num_frames`` frames (32 to 1024) sampled uniformly over the WHOLE video (one frame per
equal segment, random position inside it), one activity label per video; token dropout at a high
ratio (0.75-0.95, ``token_dropout.*``), activation checkpointing (``model.activation_checkpointing``),
cross-entropy + ``mae_weight`` x Partial-MAE.

Evaluation sees all tokens of ``task.eval_num_frames`` frames (default ``data.num_frames``), in the
modes listed in ``task.eval_modes``, each its own evaluation with the metric prefix ``{split}_{mode}``:

- ``full``: one forward over every token of the clip (attention over all of them);
- ``chunked``: consecutive chunks of ``task.chunk_frames`` frames, each encoded alone with the temporal
  positions it has in the whole clip (``t_offset``); the chunks' pooled features are averaged, then
  classified (the head is linear: the mean of the chunks' logits);
- ``draws``: ``task.eval_draws`` token-dropout draws at ``task.eval_draw_ratio``, one fixed seed per
  draw (deterministic), softmax averaged;
- ``offsets``: ``task.eval_offsets`` uniform samplings whose frames sit at (k + 0.5) / V inside every
  segment, softmax averaged over the views.

The first mode also runs every ``train.eval_every`` steps; the others at the end of training.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from turbo_ds.config import TrainConfig
from turbo_ds.models import TurboModel
from turbo_ds.tasks.base import DataSpec, EvalSpec, MeanEvaluator, Task, TaskOutput, option_error
from turbo_ds.tasks.common import (
    add_mae_loss,
    average_views,
    num_classes_in_index,
    tokens_per_clip,
    topk_accuracy,
)
from turbo_ds.tasks.registry import register_task

EVAL_MODES = ("full", "chunked", "draws", "offsets")
MODE_NAMES = {
    "full": "all tokens, full attention",
    "chunked": "temporal chunks, absolute positions",
    "draws": "token-dropout draws, softmax averaged",
    "offsets": "temporal offsets, softmax averaged",
}


@dataclass
class LongVideoOptions:
    """``task.*`` keys of the long_video task."""

    num_classes: int = 0
    """Number of activities (0 = read from ``data.index``)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (training only)."""
    eval_num_frames: int = 0
    """Frames per video at evaluation (0 = ``data.num_frames``); more than training is the point."""
    eval_modes: list[str] = field(default_factory=lambda: ["full"])
    """Evaluations to run, from full, chunked, draws, offsets; the first also runs during training."""
    chunk_frames: int = 0
    """chunked: frames per chunk (0 = ``data.num_frames``); must divide ``eval_num_frames``."""
    eval_draws: int = 4
    """draws: token-dropout draws averaged per video."""
    eval_draw_ratio: float | None = None
    """draws: drop ratio of the test-time draws (null = ``token_dropout.drop_ratio``)."""
    eval_seed: int = 0
    """draws: draw d uses the seed eval_seed + d, for every batch (evaluation is deterministic)."""
    eval_offsets: int = 3
    """offsets: uniform samplings (views) per video."""

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise option_error("num_classes", self.num_classes, "must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise option_error("label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if self.eval_num_frames < 0:
            raise option_error("eval_num_frames", self.eval_num_frames, "must be >= 0 (0 = data.num_frames)")
        if not self.eval_modes:
            raise option_error(
                "eval_modes", self.eval_modes, f"must name at least one of {', '.join(EVAL_MODES)}"
            )
        bad = [m for m in self.eval_modes if m not in EVAL_MODES]
        if bad:
            raise option_error(
                "eval_modes", self.eval_modes, f"unknown {bad}; choose from {', '.join(EVAL_MODES)}"
            )
        if len(set(self.eval_modes)) != len(self.eval_modes):
            raise option_error("eval_modes", self.eval_modes, "lists a mode twice")
        if self.chunk_frames < 0:
            raise option_error("chunk_frames", self.chunk_frames, "must be >= 0 (0 = data.num_frames)")
        if self.eval_draws < 1:
            raise option_error("eval_draws", self.eval_draws, "must be >= 1")
        if self.eval_draw_ratio is not None and not 0.0 < self.eval_draw_ratio < 1.0:
            raise option_error("eval_draw_ratio", self.eval_draw_ratio, "must be in (0, 1) or null")
        if self.eval_offsets < 1:
            raise option_error("eval_offsets", self.eval_offsets, "must be >= 1")


def resolve_options(opts: LongVideoOptions, cfg: TrainConfig, tubelet_size: int) -> LongVideoOptions:
    """Defaults filled in from ``cfg`` (frames, classes, draw ratio), and the frame counts checked
    against each other and the tubelet size."""
    t = opts.eval_num_frames or cfg.data.num_frames
    chunk = opts.chunk_frames or cfg.data.num_frames
    if t % tubelet_size:
        raise option_error("eval_num_frames", t, f"must be a multiple of the tubelet size {tubelet_size}")
    if "chunked" in opts.eval_modes and (chunk % tubelet_size or t % chunk):
        raise option_error(
            "chunk_frames",
            chunk,
            f"must be a multiple of the tubelet size {tubelet_size} and divide eval_num_frames {t}",
        )
    ratio = opts.eval_draw_ratio if opts.eval_draw_ratio is not None else cfg.token_dropout.drop_ratio
    if "draws" in opts.eval_modes and not 0.0 < ratio < 1.0:
        raise option_error(
            "eval_draw_ratio", opts.eval_draw_ratio, "must be set when token_dropout.drop_ratio is 0"
        )
    return dataclasses.replace(
        opts,
        num_classes=opts.num_classes or num_classes_in_index(cfg),
        eval_num_frames=t,
        chunk_frames=chunk,
        eval_draw_ratio=float(ratio),
    )


def build_model_fresh_head(cfg: TrainConfig, num_classes: int) -> TurboModel:
    """``build_model`` whose ``model.pretrained`` weights (a short-clip model, e.g. a Kinetics-400
    fine-tune exported by scripts/export.py) start everything but the head: activities are new classes."""
    from turbo_ds.models import load_pretrained
    from turbo_ds.tasks import build_model

    m = cfg.model
    model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(m, pretrained=None)), num_classes)
    if m.pretrained:
        report = load_pretrained(
            model.encoder,
            m.pretrained,
            fmt=m.pretrained_format,
            inflation=m.inflation,
            exclude=("head.",),
            weights_only=not m.pretrained_trust_pickle,
        )
        if {"pos_embed_spatial", "pos_embed_temporal"} <= set(report.missing):
            start_learned_tables_at_sincos(model.encoder)
            report.notes.append("position tables: the checkpoint's fixed sin-cos values, learned from here")
        print(
            f"[turbo_ds] loaded pretrained weights (all but the head) from {m.pretrained}: {report}",
            flush=True,
        )
    return model


@torch.no_grad()
def start_learned_tables_at_sincos(encoder) -> None:
    """Learned spatial / temporal tables set to the fixed sin-cos tables (which are separable: their
    sum is ``separable_sincos``), so a sin-cos checkpoint computes what it did, and the temporal
    table, learned from here, is resized when evaluation takes more frames."""
    from turbo_ds.models.pos_embed import sincos_1d, sincos_2d

    t, h, w = encoder.cfg.grid
    d = encoder.cfg.embed_dim
    encoder.pos_embed_spatial.copy_(sincos_2d(d, h, w)[None])
    encoder.pos_embed_temporal.copy_(sincos_1d(d, torch.arange(t))[None])


class ModeEvaluator(MeanEvaluator):
    """Mean loss / top-k of one evaluation mode; refuses outputs computed in another mode."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def update(self, batch: dict[str, Any], out: TaskOutput) -> None:
        if out.extras.get("eval_mode") != self.mode:
            raise RuntimeError(
                f"{self.mode} evaluator got an output of mode {out.extras.get('eval_mode')!r}: its batches "
                "must carry the EvalSpec's batch_keys"
            )
        super().update(batch, out)


@register_task("long_video")
class LongVideoTask(Task):
    """Wraps a :class:`TurboModel` whose encoder sees a whole long video (uniformly sampled)."""

    Options = LongVideoOptions
    headline = ("top1", "loss")
    plan_covers_activations = True  # the encoder (with its head) and the decoder: what the planner models

    def __init__(self, model: TurboModel, options: LongVideoOptions, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.options = options
        self.cfg = cfg
        self.mae_weight = float(cfg.task.mae_weight)
        self.num_classes = options.num_classes

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LongVideoTask:
        from turbo_ds.models import model_config

        opts = cls.parse_options(cfg.task.options)
        size = {"num_frames": cfg.data.num_frames, "img_size": cfg.data.img_size}
        tubelet = model_config(cfg.model.name, **{**cfg.model.overrides, **size}).tubelet_size
        opts = resolve_options(opts, cfg, tubelet)
        return cls(build_model_fresh_head(cfg, opts.num_classes), opts, cfg)

    # ---- data and evaluation ---------------------------------------------------------------------
    def train_data(self) -> DataSpec:
        return DataSpec(sampler="uniform", train=True)

    def _eval_data(self, mode: str) -> DataSpec:
        kwargs: dict[str, Any] = {"num_frames": self.options.eval_num_frames}
        if mode == "offsets":
            kwargs["num_clips"] = self.options.eval_offsets
        return DataSpec(sampler="uniform", train=False, kwargs=kwargs)

    def _eval_spec(self, split: str, mode: str, during_training: bool) -> EvalSpec:
        return EvalSpec(
            split,
            self._eval_data(mode),
            functools.partial(ModeEvaluator, mode),
            prefix=f"{split}_{mode}",
            during_training=during_training,
            name=MODE_NAMES[mode],
            batch_keys={"eval_mode": mode},  # the forward reads it from the batch
        )

    def eval_specs(self, split: str | None = None) -> list[EvalSpec]:
        modes = self.options.eval_modes
        if split is not None:  # scripts/eval.py --split S: every mode, as eval_{S}_{mode}
            return [self._eval_spec(split, m, True) for m in modes]
        d = self.cfg.data
        specs = []
        if d.val_split:
            specs += [self._eval_spec(d.val_split, m, i == 0) for i, m in enumerate(modes)]
        if d.test_split and d.test_split != d.val_split:
            specs += [self._eval_spec(d.test_split, m, False) for m in modes]
        return specs

    def summary(self, metrics: dict[str, float], prefix: str) -> str | None:
        if f"{prefix}/top1" not in metrics:
            return None
        mode = prefix.rsplit("_", 1)[-1]
        mode = mode if mode in MODE_NAMES else self.options.eval_modes[0]  # scripts/eval.py's eval_S
        return (
            f"{prefix} top-1 {metrics[f'{prefix}/top1']:.2f}% (chance {100.0 / max(1, self.num_classes):.1f}%) "
            f"on {int(metrics.get(f'{prefix}/num_samples', 0))} videos x {self.options.eval_num_frames} frames "
            f"({MODE_NAMES.get(mode, mode)})"
        )

    def tracking_params(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "eval_num_frames": self.options.eval_num_frames}

    # ---- forward ---------------------------------------------------------------------------------
    def full_logits(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, K): every token of the clip in one forward."""
        return self.model.encoder(video, return_features=True).logits.float()

    def chunked_logits(self, video: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, K): chunks of ``chunk_frames`` encoded one at a time, each with the
        temporal positions of its place in the clip; the mean of the chunks' logits, which is the head
        applied to the mean of their pooled features (the head is linear)."""
        chunk = chunk_frames or self.options.chunk_frames
        total = video.shape[2]
        if total % chunk:
            raise ValueError(f"{total} frames do not split into chunks of {chunk}")
        logits = [
            self.model.encoder(
                video[:, :, start : start + chunk], return_features=True, t_offset=start, t_total=total
            ).logits.float()
            for start in range(0, total, chunk)
        ]
        return torch.stack(logits).mean(dim=0)

    def draws_logits(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, K): log of the softmax averaged over ``eval_draws`` token-dropout
        draws, draw d seeded with ``eval_seed + d`` (a CPU generator: the same masks on any device)."""
        o = self.options
        logits = [
            self.model.encoder(
                video,
                return_features=True,
                drop_ratio=o.eval_draw_ratio,
                generator=torch.Generator().manual_seed(o.eval_seed + d),
            ).logits
            for d in range(o.eval_draws)
        ]
        return average_views(torch.stack(logits, dim=1).flatten(0, 1), o.eval_draws)

    def offsets_logits(self, video: torch.Tensor) -> torch.Tensor:
        """(B, V, C, T, H, W) -> (B, K): log of the softmax averaged over the V temporal offsets."""
        views = video.shape[1]
        return average_views(self.full_logits(video.flatten(0, 1)), views)

    def eval_logits(self, video: torch.Tensor, mode: str) -> torch.Tensor:
        if (mode == "offsets") != (video.ndim == 6):
            raise ValueError(f"eval mode {mode!r} got a video of shape {tuple(video.shape)}")
        return getattr(self, f"{mode}_logits")(video)

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        video, labels = batch["video"], batch["label"]
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        extras: dict[str, Any] = {}
        if self.training:
            out = self.model(video)
            logits = out.logits.float()
            extras["tokens_per_clip"] = tokens_per_clip(out)
            add_mae_loss(losses, metrics, out, self.mae_weight)
        else:
            mode = batch.get("eval_mode") or ("offsets" if video.ndim == 6 else "full")
            logits = self.eval_logits(video, mode)
            extras["eval_mode"] = mode
        smoothing = self.options.label_smoothing if self.training else 0.0
        losses = {"cls_loss": F.cross_entropy(logits, labels, label_smoothing=smoothing), **losses}
        with torch.no_grad():
            metrics.update(topk_accuracy(logits.detach(), labels, ks=(1, 5)))
        extras["logits"] = logits.detach()
        return TaskOutput(
            loss=sum(losses.values()),
            losses=losses,
            metrics=metrics,
            batch_size=int(labels.shape[0]),
            extras=extras,
        )
