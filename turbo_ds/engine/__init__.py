"""The only place that imports deepspeed for training.

``Engine`` (deepspeed.initialize behind one class), ds_config "auto" filling, AdamW groups and the
warmup-cosine schedule, process-group setup, export of ZeRO checkpoints, the activation checkpointing
implementations (``checkpointing.py``) and the device's measured peak memory (``memory.py``).
``Engine`` is imported lazily so that light users (config checks, the optimizer helpers) do not pay
for importing deepspeed.
"""

from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config
from turbo_ds.engine.optim import WarmupCosineSchedule, param_groups, warmup_cosine

__all__ = [
    "Engine",
    "WarmupCosineSchedule",
    "fill_ds_config",
    "load_ds_config",
    "param_groups",
    "warmup_cosine",
]


def __getattr__(name: str):
    if name == "Engine":
        from turbo_ds.engine.engine import Engine

        return Engine
    raise AttributeError(name)
