"""A training config + ds_config -> the planner's inputs (torch only: no deepspeed, no data).

The encoder and Partial-MAE decoder are described exactly as :func:`turbo_ds.tasks.build_model`
builds them; parameter counts come from the whole task built on the meta device (so a text tower
counts), falling back to the video model alone when the task cannot be built here (e.g. open_clip or
the index missing on a bare GPU machine), which the plan's notes then say.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from turbo_ds.config import TrainConfig
from turbo_ds.plan.model_states import StateSetup
from turbo_ds.plan.params import ParamCounts, count_on_meta
from turbo_ds.plan.workload import DecoderShape, Workload


def encoder_config(cfg: TrainConfig, num_classes: int = 0):
    """The VideoViT config ``build_model`` would create (head size aside)."""
    from turbo_ds.models import model_config

    m = cfg.model
    return model_config(
        m.name,
        **{
            **m.overrides,
            "num_classes": num_classes,
            "num_frames": cfg.data.num_frames,
            "img_size": cfg.data.img_size,
            "drop_path_rate": m.drop_path_rate,
            "drop_ratio": cfg.token_dropout.drop_ratio,
            "drop_strategy": cfg.token_dropout.strategy,
        },
    )


def decoder_shape(cfg: TrainConfig) -> DecoderShape | None:
    if not cfg.pmae.enabled:
        return None
    from turbo_ds.models import PartialMAE

    defaults = {k: v.default for k, v in inspect.signature(PartialMAE.__init__).parameters.items()}
    p = cfg.pmae
    return DecoderShape(
        dim=p.decoder_dim or defaults["decoder_dim"],
        depth=p.decoder_depth or defaults["decoder_depth"],
        heads=p.decoder_heads or defaults["decoder_heads"],
        mlp_ratio=defaults["mlp_ratio"],
        pmae_ratio=p.pmae_ratio,
    )


def checkpoint_blocks(cfg: TrainConfig, depth: int) -> int:
    m = cfg.model
    if m.activation_checkpointing == "none":
        return 0
    return depth if m.checkpoint_num_blocks < 0 else min(depth, m.checkpoint_num_blocks)


def resolve_precision(ds: dict[str, Any], device: str) -> str:
    """bf16 / fp16 / fp32 as the trainer resolves it: ``"auto"`` bf16 means bf16 on a GPU (Ampere or
    newer: assumed for planning), fp32 on the CPU."""
    bf16 = (ds.get("bf16") or {}).get("enabled", False)
    if bf16 == "auto":
        bf16 = device == "cuda"
    if bf16:
        return "bf16"
    return "fp16" if (ds.get("fp16") or {}).get("enabled") is True else "fp32"


def param_counts(cfg: TrainConfig, notes: list[str]) -> ParamCounts:
    """Counts of the whole task (meta device; no weight file is read: counting needs shapes only, and
    the files may be on another machine); the video model alone if the task cannot be built."""
    from turbo_ds.tasks import build_task, without_weight_files

    try:
        cfg = without_weight_files(cfg)
        return count_on_meta(lambda: build_task(cfg), cfg.optim.layer_decay)
    except Exception as e:  # noqa: BLE001 - any reason the task cannot be built here
        from turbo_ds.tasks import build_model

        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))
        n = int(cfg.task.options.get("num_classes", 0) or 0)
        notes.append(
            f"task {cfg.task.name!r} could not be built here ({type(e).__name__}: {str(e)[:120]}); "
            f"counted the video model alone (head of {n} classes)"
        )
        return count_on_meta(lambda: build_model(cfg, num_classes=n), cfg.optim.layer_decay)


def _plan_covers_activations(task: str) -> bool:
    """The task's :attr:`~turbo_ds.tasks.Task.plan_covers_activations`; False for a task that cannot be
    imported here (what it adds is unknown)."""
    from turbo_ds.config import ConfigError
    from turbo_ds.tasks import get_task_class

    try:
        return get_task_class(task).plan_covers_activations
    except (ConfigError, ImportError):
        return False


def plan_inputs(
    cfg: TrainConfig, ds: dict[str, Any], world: int = 1, device: str = "cuda"
) -> tuple[Workload, ParamCounts, StateSetup, list[str]]:
    """(workload, parameter counts, model-state setup, notes) for one rank of ``cfg``."""
    notes: list[str] = []
    counts = param_counts(cfg, notes)
    vit = encoder_config(cfg)
    precision = resolve_precision(ds, device)
    workload = Workload(
        vit=vit,
        batch_size=cfg.optim.micro_batch_size,
        drop_ratio=cfg.token_dropout.drop_ratio,
        checkpoint_blocks=checkpoint_blocks(cfg, vit.depth),
        decoder=decoder_shape(cfg),
        precision=precision,
        attention="efficient",
        device=device,
    )
    setup = StateSetup.from_ds_config({**ds, "bf16": {"enabled": precision == "bf16"}}, world, device)
    if not _plan_covers_activations(cfg.task.name):
        notes.append(
            f"activations of task {cfg.task.name!r} beyond the video encoder and decoder are not modelled"
        )
    if cfg.optim.grad_accum_steps > 1:
        notes.append(
            "gradient accumulation: the peak is one micro batch's (accumulated gradients are model states)"
        )
    return workload, counts, setup, notes
