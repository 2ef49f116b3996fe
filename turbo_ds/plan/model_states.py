"""Per-rank memory of model states: parameters, gradients, master weights, optimizer states, and the
buffers DeepSpeed allocates for them, for a ZeRO stage, world size, precision and offload.

DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs`` /
``estimate_zero3_model_states_mem_needs``) are the reference for mixed precision (bf16 / fp16 with
fp32 master weights and AdamW): for ZeRO-2, 2 bytes of 16-bit parameters per parameter plus
18 / N (16-bit gradients 2, fp32 gradients 4, fp32 master 4, momentum and variance 8); for ZeRO-3,
4 x the largest layer plus 18 / N; with the optimizer offloaded, 2 (ZeRO-2) or 4 x the largest
layer (+ 2 / N unless parameters are offloaded too) (ZeRO-3). :func:`deepspeed_estimate` reproduces
those numbers and the tests check them against DeepSpeed's functions. Where this module differs,
and why:

- **Gradient buckets.** With ``contiguous_gradients`` DeepSpeed allocates ``reduce_bucket_size``
  elements of the gradient dtype, twice with ``overlap_comm`` (double buffering), whatever the
  model's size; the estimators leave them out. For a small model they are most of the memory
  (``ds_configs/zero2.json``'s 2e8 elements are 1.6 GB in fp32).
- **ZeRO-1 and stage 0**, which the estimators do not cover: ZeRO-1 keeps full 16-bit gradients
  (2 + 2 + 16 / N); stage 0 (DeepSpeed's bf16 optimizer) keeps everything on every rank (20).
- **fp32 training** (what the CPU runs): parameters and gradients are 4 bytes; ZeRO-1/2 still keep an
  fp32 copy of the partition: ZeRO-2 holds 4 + 12 / N (copy 4, AdamW 8) through backward and its
  4 / N gradient partition only around the step; ZeRO-1 4 + 4 (full gradients) + 12 / N.
- **ZeRO-3 gathering**: DeepSpeed keeps gathered parameters while their reuse distance is under
  ``stage3_max_reuse_distance`` (default 1e9), up to ``stage3_max_live_parameters``: below a billion
  parameters every rank holds the whole 16-bit model during forward and backward, not just the
  estimator's largest layer.
- **ZeRO-3 persistence**: parameters of at most ``stage3_param_persistence_threshold`` elements are
  not partitioned (every rank holds them whole); for a small model that is most biases, norms and
  narrow layers.
- **Offload on the CPU**: with ``device="cpu"`` offloaded states are still counted (host and device
  are one memory there).
- **Frozen parameters** (e.g. a frozen text tower) have parameter bytes only.
- **Plain torch** (``engine="torch"``, the model-core probe): parameters, gradients and AdamW states
  all in the parameter dtype (4 x bytes per parameter), no partitioning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turbo_ds.plan.params import ParamCounts
from turbo_ds.plan.workload import BYTES

# DeepSpeed's defaults for the keys read here (deepspeed.runtime.zero.config.DeepSpeedZeroConfig).
ZERO_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "contiguous_gradients": True,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
    "stage3_max_live_parameters": 1_000_000_000,
}


@dataclass
class StateSetup:
    """How model states are held: ``engine`` "deepspeed" or "torch"; ZeRO ``stage``; ``world`` data
    parallel ranks; ``precision`` fp32/bf16/fp16; offloads (to CPU); the ``zero`` section's keys."""

    engine: str = "deepspeed"
    stage: int = 0
    world: int = 1
    precision: str = "fp32"
    offload_optimizer: bool = False
    offload_param: bool = False
    zero: dict[str, Any] = field(default_factory=dict)
    device: str = "cuda"

    def __post_init__(self) -> None:
        if self.engine not in ("deepspeed", "torch"):
            raise ValueError(f"engine must be deepspeed or torch, got {self.engine!r}")
        if self.stage not in (0, 1, 2, 3):
            raise ValueError(f"ZeRO stage must be 0-3, got {self.stage}")
        if self.world < 1:
            raise ValueError(f"world size must be >= 1, got {self.world}")
        if self.precision not in BYTES:
            raise ValueError(f"precision must be one of {sorted(BYTES)}, got {self.precision!r}")

    def zero_key(self, key: str):
        if key == "overlap_comm":
            value = self.zero.get("overlap_comm")
            return self.stage == 3 if value is None else bool(value)  # DeepSpeed's dynamic default
        return self.zero.get(key, ZERO_DEFAULTS[key])

    @classmethod
    def from_ds_config(cls, ds: dict[str, Any], world: int, device: str = "cuda") -> StateSetup:
        """From a resolved ds_config (``turbo_ds.engine.ds_config``'s readers: no deepspeed import)."""
        from turbo_ds.engine.ds_config import offloads_optimizer, precision, zero_stage

        zero = dict(ds.get("zero_optimization", {}) or {})
        off_param = (zero.get("offload_param") or {}).get("device", "none") not in ("none", None)
        return cls(
            "deepspeed", zero_stage(ds), world, precision(ds), offloads_optimizer(ds), off_param, zero, device
        )


@dataclass
class ModelStates:
    """``items``: bytes alive for the whole step (per rank); ``grad_bytes_per_param``: bytes per
    trainable parameter of gradients that appear during backward in the model dtype (``param.grad``:
    torch, stage 0 and ZeRO-1; ZeRO-2/3 copy them into buckets instead)."""

    items: dict[str, int]
    grad_bytes_per_param: int
    step_items: dict[str, int] = field(default_factory=dict)
    """Alive only around the optimizer step (e.g. fp32 ZeRO-2's reduced gradient partition)."""

    @property
    def total(self) -> int:
        return sum(self.items.values())


def model_states(counts: ParamCounts, setup: StateSetup) -> ModelStates:
    """The itemised model states of one rank (module docstring)."""
    psi, n = counts.trainable, setup.world
    s = BYTES[setup.precision]
    if setup.engine == "torch":
        return ModelStates({"parameters": counts.total * s, "optimizer states (AdamW)": 2 * psi * s}, s)
    mixed = s == 2
    items: dict[str, int] = {}
    stage = setup.stage
    # Parameters in the model dtype: full on every rank below ZeRO-3.
    if stage == 3:
        # Tensors under the persistence threshold stay whole on every rank; the rest is partitioned.
        whole = min(counts.small(int(setup.zero_key("stage3_param_persistence_threshold"))), counts.total)
        offloaded = setup.offload_param and setup.device != "cpu"
        items["parameters"] = 0 if offloaded else ((counts.total - whole) * s) // n + whole * s
        if n > 1:
            # Gathered parameters stay gathered while their reuse distance is under
            # stage3_max_reuse_distance (1e9 by default), up to stage3_max_live_parameters: for any
            # model below a billion parameters, all of them during forward and backward.
            live = min(counts.total - whole, int(setup.zero_key("stage3_max_live_parameters")))
            items["gathered parameters (ZeRO-3)"] = max(live, counts.largest_layer) * s
    else:
        items["parameters"] = counts.total * s
    master = 4 * psi if mixed else 0  # fp32 master weights (fp32 training updates the parameters)
    if stage >= 1 and not mixed:
        master = 4 * psi  # ZeRO-1/2/3 keep an fp32 copy of the partition even in fp32
    opt = 8 * psi
    # fp32 gradients of the partition (in fp32 training ZeRO-2 reduces into the fp32 copy's gradient).
    grads32 = 4 * psi if mixed or stage == 3 else 0
    # ZeRO-2 keeps a 16-bit gradient partition besides the fp32 one; stage 0 and ZeRO-1 hold full
    # 16-bit gradients in param.grad (on the backward timeline); ZeRO-3 reduces straight into fp32.
    grads_model = 2 * psi if mixed and stage == 2 else 0
    part = 1 if stage == 0 else n
    # Offloaded states leave the GPU; on the CPU they stay in the memory being planned.
    on_device = not setup.offload_optimizer or setup.device == "cpu"
    items["fp32 master weights"] = master // part if on_device else 0
    items["optimizer states (AdamW)"] = opt // part if on_device else 0
    items["gradient partitions"] = (grads32 + grads_model) // part if on_device else 0
    items["gradient buckets (DeepSpeed)"] = bucket_bytes(setup, psi)
    grad_pp = s if stage in (0, 1) else 0
    step_items = {}
    if not mixed and stage == 2:  # fp32: the reduced partition is built at the end of backward
        step_items["gradient partition (fp32)"] = 4 * psi // n
    return ModelStates({k: v for k, v in items.items() if v}, grad_pp, step_items)


def bucket_bytes(setup: StateSetup, trainable: int) -> int:
    """The reduction buffers of ZeRO-1/2/3 with contiguous gradients (see the module docstring)."""
    if setup.stage == 0 or not setup.zero_key("contiguous_gradients") or trainable == 0:
        return 0
    s = BYTES[setup.precision]
    # ZeRO-1/2 double-buffer with overlap_comm; ZeRO-3 keeps one bucket per dtype.
    copies = 2 if setup.zero_key("overlap_comm") and setup.stage < 3 else 1
    grad_dtype = 4 if setup.stage == 1 else s  # ZeRO-1 stages the fp32 accumulator
    return copies * int(setup.zero_key("reduce_bucket_size")) * grad_dtype


def deepspeed_estimate(counts: ParamCounts, setup: StateSetup) -> int | None:
    """DeepSpeed's estimator's GPU bytes for these inputs (ZeRO-2/3, mixed precision), else None."""
    psi, n = counts.total, setup.world
    if BYTES[setup.precision] != 2 or setup.stage not in (2, 3):
        return None
    if setup.stage == 2:
        return 2 * psi if setup.offload_optimizer else 2 * psi + int(18 * psi / n)
    largest = 4 * counts.largest_layer
    if setup.offload_optimizer:
        return largest if setup.offload_param else largest + int(2 * psi / n)
    return largest + int(18 * psi / n)


BUFFERS = ("gradient buckets (DeepSpeed)", "gathered parameters (ZeRO-3)")


def states_without_buffers(counts: ParamCounts, setup: StateSetup) -> int:
    """Model-state bytes comparable with :func:`deepspeed_estimate`: no buckets, every gradient,
    and for ZeRO-3 the estimator's gather buffer (4 bytes x the largest layer) instead of the
    gathered parameters."""
    st = model_states(counts, setup)
    total = st.total - sum(st.items.get(k, 0) for k in BUFFERS)
    if setup.stage == 3:
        total += 4 * counts.largest_layer
    return total + st.grad_bytes_per_param * counts.trainable
