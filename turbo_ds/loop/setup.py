"""What training and evaluation build alike (nanochat's ``compute_init``): the process group, the
resolved ds_config, the seed, the task and its engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from turbo_ds.config import TrainConfig
from turbo_ds.loop.rng import seed_everything

if TYPE_CHECKING:
    from turbo_ds.engine.engine import Engine
    from turbo_ds.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`setup` built, for the trainer or the evaluation entry point."""

    cfg: TrainConfig
    """The config with the task's resolved options (defaults, ``num_classes`` from the index)."""
    ds_config: dict
    rank: int
    world_size: int
    task: Task
    engine: Engine


def setup(
    cfg: TrainConfig,
    ds_config: str | Path | dict,
    task: Task | None = None,
    prepare_task: Callable[[Task], None] | None = None,
) -> Setup:
    """Join the process group, fill ``ds_config``'s ``"auto"`` fields from ``cfg``, seed every rank
    alike (the same initial weights everywhere), build the task (unless given), let ``prepare_task``
    see it (evaluation loads its weights there), apply ``model.activation_checkpointing`` and wrap it
    in the engine."""
    from turbo_ds.engine import distributed
    from turbo_ds.engine.checkpointing import apply_activation_checkpointing
    from turbo_ds.engine.engine import Engine, resolve_ds_config
    from turbo_ds.tasks import build_task

    rank, world = distributed.init_distributed()
    ds = resolve_ds_config(ds_config, cfg, world)
    seed_everything(cfg.seed)
    task = task if task is not None else build_task(cfg)
    options = {**cfg.task.options, **task.options_dict()}
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, options=options))
    if prepare_task is not None:
        prepare_task(task)
    if cfg.model.activation_checkpointing != "none":
        n = None if cfg.model.checkpoint_num_blocks < 0 else cfg.model.checkpoint_num_blocks
        offload = bool(ds.get("activation_checkpointing", {}).get("cpu_checkpointing", False))
        apply_activation_checkpointing(
            task, cfg.model.activation_checkpointing, n, offload_to_cpu=offload, ds_config=ds
        )
    return Setup(cfg, ds, rank, world, task, Engine(task, ds, cfg))
