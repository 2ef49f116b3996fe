"""Tasks: one module per objective, each a :class:`Task` returning a :class:`TaskOutput`.

``build_task(cfg)`` looks ``task.name`` up in the registry (or imports ``module:Class``) and calls the
task's ``from_config``; ``build_model`` builds the shared video core (VideoViT + optional Partial-MAE,
pretrained weights) that tasks wrap.
"""

from __future__ import annotations

import dataclasses

from turbo_ds.config import TrainConfig
from turbo_ds.tasks.base import DataSpec, EvalSpec, Evaluator, MeanEvaluator, Task, TaskOutput
from turbo_ds.tasks.registry import get_task_class, list_tasks, register_task

__all__ = [
    "DataSpec",
    "EvalSpec",
    "Evaluator",
    "MeanEvaluator",
    "Task",
    "TaskOutput",
    "build_model",
    "build_task",
    "get_task_class",
    "list_tasks",
    "register_task",
    "weight_files",
    "without_weight_files",
]


def build_model(cfg: TrainConfig, num_classes: int = 0, proj_dim: int | None = None):
    """The TurboModel described by ``cfg.model``, ``cfg.token_dropout`` and ``cfg.pmae``, with a
    ``num_classes`` head (0 = none) and an optional linear projection of the pooled feature."""
    from turbo_ds.models import PartialMAE, TurboModel, create_model, load_pretrained

    m = cfg.model
    overrides = dict(m.overrides)
    overrides.update(
        num_classes=num_classes,
        num_frames=cfg.data.num_frames,
        img_size=cfg.data.img_size,
        drop_path_rate=m.drop_path_rate,
        drop_ratio=cfg.token_dropout.drop_ratio,
        drop_strategy=cfg.token_dropout.strategy,
    )
    if proj_dim is not None:
        overrides["proj_dim"] = proj_dim
    encoder = create_model(m.name, **overrides)
    if m.pretrained:
        report = load_pretrained(
            encoder,
            m.pretrained,
            fmt=m.pretrained_format,
            inflation=m.inflation,
            weights_only=not m.pretrained_trust_pickle,
        )
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


def build_task(cfg: TrainConfig) -> Task:
    """The task ``cfg.task.name`` built from ``cfg`` (its options validated)."""
    return get_task_class(cfg.task.name).from_config(cfg)


def weight_files(cfg: TrainConfig) -> dict[str, str]:
    """The weight files ``cfg`` loads when its task is built: ``model.pretrained`` and the task's
    :attr:`Task.weight_options` (e.g. ``task.text_checkpoint``) that are set, key -> path."""
    files = {"model.pretrained": cfg.model.pretrained}
    for key in get_task_class(cfg.task.name).weight_options:
        files[f"task.{key}"] = cfg.task.options.get(key)
    return {k: str(v) for k, v in files.items() if v}


def without_weight_files(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with none of :func:`weight_files`: the task starts from the model's own initialisation
    (evaluation, whose checkpoint holds the weights; the planner, which needs shapes only)."""
    options = {**cfg.task.options, **dict.fromkeys(get_task_class(cfg.task.name).weight_options, None)}
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, pretrained=None),
        task=dataclasses.replace(cfg.task, options=options),
    )


def __getattr__(name: str):  # lazy: importing turbo_ds.tasks does not build every task module
    if name == "ClassificationTask":
        from turbo_ds.tasks.classification import ClassificationTask

        return ClassificationTask
    if name == "topk_accuracy":
        from turbo_ds.tasks.common import topk_accuracy

        return topk_accuracy
    raise AttributeError(name)
