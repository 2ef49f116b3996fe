"""Tasks: one module per objective, each an ``nn.Module`` returning a :class:`TaskOutput`.

``build_task(cfg, num_classes)`` builds the model core (VideoViT + optional Partial-MAE, pretrained
weights) and wraps it in the configured task.
"""

from __future__ import annotations

from turbo_ds.config import TrainConfig
from turbo_ds.tasks.base import TaskOutput
from turbo_ds.tasks.classification import ClassificationTask, topk_accuracy

__all__ = ["ClassificationTask", "TaskOutput", "build_model", "build_task", "topk_accuracy"]


def build_model(cfg: TrainConfig, num_classes: int):
    """The TurboModel described by ``cfg.model``, ``cfg.token_dropout`` and ``cfg.pmae``."""
    from turbo_ds.models import PartialMAE, TurboModel, create_model, load_pretrained

    m = cfg.model
    overrides = dict(m.overrides)
    overrides.update(
        num_classes=m.num_classes if m.num_classes is not None else num_classes,
        num_frames=cfg.data.num_frames,
        img_size=cfg.data.img_size,
        drop_path_rate=m.drop_path_rate,
        drop_ratio=cfg.token_dropout.drop_ratio,
        drop_strategy=cfg.token_dropout.strategy,
    )
    encoder = create_model(m.name, **overrides)
    if m.pretrained:
        report = load_pretrained(encoder, m.pretrained, fmt=m.pretrained_format, inflation=m.inflation)
        print(f"[turbo_ds] loaded pretrained weights from {m.pretrained}: {report}", flush=True)
    pmae = None
    if cfg.pmae.enabled:
        p = cfg.pmae
        kwargs = {
            k: v
            for k, v in (
                ("decoder_dim", p.decoder_dim),
                ("decoder_depth", p.decoder_depth),
                ("decoder_heads", p.decoder_heads),
            )
            if v is not None
        }
        pmae = PartialMAE.for_encoder(
            encoder,
            pmae_ratio=p.pmae_ratio,
            mae_weight=cfg.task.mae_weight,
            norm_pix_loss=p.norm_pix_loss,
            **kwargs,
        )
    return TurboModel(encoder, pmae)


def build_task(cfg: TrainConfig, num_classes: int) -> ClassificationTask:
    model = build_model(cfg, num_classes)
    if cfg.task.name == "classification":
        return ClassificationTask(
            model, label_smoothing=cfg.task.label_smoothing, mae_weight=cfg.task.mae_weight
        )
    raise ValueError(f"config key 'task.name' = {cfg.task.name!r}: unknown task")
