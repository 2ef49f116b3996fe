"""How much of a training step waited for data, and what would remove the wait.

Token dropout makes the model step about 4x cheaper; decoding does not get cheaper with it, so a run
that was model-bound becomes data-bound. The loop times every ``next(batch)`` of the training loader
(the data wait) and the loader counts the seconds its producing processes spent on each batch (decode,
transforms: the per-worker cost). From the two, per logging window:

- ``train/data_wait_s``: seconds per step this rank waited for its batches (max over ranks);
- ``train/data_wait_frac``: that wait as a fraction of the step time (max over ranks);
- ``train/data_load_s_per_batch``: seconds one worker (one core) spends producing one micro batch;
- ``train/data_workers_needed``: workers per rank that would deliver batches as fast as the model
  consumes them (``ceil(load time per batch / model time per micro batch)``).
"""

from __future__ import annotations

import math
import os

WAIT_FRACTION_ADVICE = 0.2
"""A window whose data wait is above this share of the step time prints the advice line (once)."""


def workers_needed(load_s_per_batch: float, model_s_per_batch: float) -> int:
    """Workers that, each producing a batch in ``load_s_per_batch``, keep up with a consumer taking
    ``model_s_per_batch`` per batch."""
    if load_s_per_batch <= 0:
        return 1
    return max(1, math.ceil(load_s_per_batch / max(model_s_per_batch, 1e-9)))


def advice(
    wait_frac: float,
    wait_s: float,
    step_s: float,
    load_s_per_batch: float,
    model_s_per_batch: float,
    batch_size: int,
    num_workers: int,
    backend: str,
) -> str:
    """The one line printed when a window waited more than :data:`WAIT_FRACTION_ADVICE` for data."""
    need = workers_needed(load_s_per_batch, model_s_per_batch)
    rate = batch_size / max(load_s_per_batch, 1e-9)
    from turbo_ds.engine.distributed import env_local_world_size

    local_ranks = env_local_world_size()
    cores = os.cpu_count() or 1
    where = (
        f"{need} worker(s) per rank would remove the wait"
        f" ({need * local_ranks} cores for {local_ranks} rank(s) on this machine, which has {cores})"
    )
    return (
        f"data: the training steps waited {100 * wait_frac:.0f}% of their time for batches "
        f"({wait_s:.3f} s of {step_s:.3f} s a step). One worker makes a micro batch in "
        f"{load_s_per_batch:.3f} s ({rate:.1f} clips/s per core) and the model takes {model_s_per_batch:.3f} s "
        f"for one: {where}. Knobs: data.num_workers (now {num_workers}), data.backend (now {backend}), "
        "and videos transcoded to a short keyframe interval and the training resolution "
        "(docs/training.md, Data wait)."
    )
