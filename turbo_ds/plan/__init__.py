"""Memory planner: per-rank peak memory of a training config, itemised, before launching.

    python -m turbo_ds.plan --config C --ds_config D [--set k=v ...] [--world N] [--gpu-mem 80GiB]
                            [--json FILE] [--measure]

Model states follow DeepSpeed's estimators (:mod:`turbo_ds.plan.model_states`), activations the
saved-tensor accounting of :mod:`turbo_ds.plan.activations`. Prediction only: measuring real steps to
check it is :mod:`turbo_ds.measure`'s (``--measure`` calls it lazily). Imports torch only (no
deepspeed, no data libraries, no training loop).
"""

from turbo_ds.plan.fit import FitReport, fit_report, parse_memory
from turbo_ds.plan.model_states import StateSetup, deepspeed_estimate, model_states
from turbo_ds.plan.params import ParamCounts, count_on_meta, count_params
from turbo_ds.plan.planner import MemoryPlan, plan
from turbo_ds.plan.workload import DecoderShape, Workload

__all__ = [
    "DecoderShape",
    "FitReport",
    "MemoryPlan",
    "ParamCounts",
    "StateSetup",
    "Workload",
    "count_on_meta",
    "count_params",
    "deepspeed_estimate",
    "fit_report",
    "model_states",
    "parse_memory",
    "plan",
]
