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
  (``ds_configs/zero2.json``'s 2e8 elements are 1.6 GB in fp32). ZeRO-1/2 allocate them at the first
  gradient hook of each backward and release them at its end (``setup_buckets`` /
  ``_release_ipg_buffers``; the gradients of other ranks' partitions, views of the bucket, go with
  ``_clear_param_grad_only`` then): they are not there at the optimizer step. ZeRO-3 allocates its
  bucket with the optimizer and keeps it.
- **ZeRO-1 and stage 0**, which the estimators do not cover: ZeRO-1 keeps full 16-bit gradients
  (2 + 2 + 16 / N); stage 0 (DeepSpeed's bf16 optimizer) keeps everything on every rank (20).
- **fp32 training** (what the CPU runs; DeepSpeedZeroOptimizer's path when the gradient dtype is
  the model's): parameters and gradients are 4 bytes; ZeRO-1/2 keep an fp32 copy of the partition
  (4 / N) and AdamW's moments (8 / N). The gradients of the parameters that overlap the rank's
  partitions are copied into one buffer (``grads_in_partition``, the parameters counted whole:
  :meth:`ParamCounts.in_partition`): ZeRO-2 allocates it at the first bucket reduction, during
  backward; ZeRO-1 (``overlap_comm`` off) reduces after backward, moving ``param.grad`` into the
  bucket and then into that buffer. At the step each parameter group's gradient views are flattened
  into a new fp32 tensor (its partition) for the optimizer, one group at a time, while the buffer is
  alive. ZeRO-3 flattens its gradient buffer's views per group the same way, in any precision.
  Mixed-precision ZeRO-1/2 (fp32 gradient partitions built in place) and optimizer offload keep the
  estimator's accounting: the CPU, where the planner is checked, runs neither.
- **Stage 0 in fp32** (the engine with torch's AdamW): after backward the engine's all-reduce
  (``buffered_allreduce_fallback``) flattens the gradients into chunks of 5e8 elements, on one rank
  too: a second copy of every gradient for a moment.
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
    """One rank's model states over the step's three phases (see :func:`turbo_ds.plan.planner.plan`).

    ``items``: bytes alive for the whole step; ``backward_items``: during backward only (ZeRO-1/2's
    gradient buckets, gradients in flight); ``reduction_items``: the moment after backward when the
    gradients are reduced and nothing of the activations is left (the peak of that phase);
    ``step_items``: around the optimizer step (the gradients, DeepSpeed's flattened copy of a group's
    gradient partition). During backward, gradients grow with the elements produced so far:
    ``grad_bytes_per_param`` bytes each in ``param.grad`` (torch, stage 0, ZeRO-1), plus
    ``partition_after`` = (elements, bytes): a buffer that exists once that many gradient elements
    have been produced (fp32 ZeRO-2's gradient partition, allocated at the first bucket reduction)."""

    items: dict[str, int]
    grad_bytes_per_param: int
    step_items: dict[str, int] = field(default_factory=dict)
    backward_items: dict[str, int] = field(default_factory=dict)
    reduction_items: dict[str, int] = field(default_factory=dict)
    partition_after: tuple[int, int] | None = None

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def grads_in_backward(self, elements: int) -> int:
        """Gradient bytes alive once backward has produced the gradients of ``elements`` parameters."""
        extra = 0
        if self.partition_after is not None and elements > self.partition_after[0]:
            extra = self.partition_after[1]
        return elements * self.grad_bytes_per_param + extra


def _nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


def model_states(counts: ParamCounts, setup: StateSetup) -> ModelStates:
    """The itemised model states of one rank (module docstring)."""
    psi, n = counts.trainable, setup.world
    s = BYTES[setup.precision]
    if setup.engine == "torch":
        items = {"parameters": counts.total * s, "optimizer states (AdamW)": 2 * psi * s}
        return ModelStates(items, s, {"gradients": psi * s})
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
    # fp32 gradients of the partition (fp32 ZeRO-1/2 keep theirs in the model dtype: below).
    grads32 = 4 * psi if mixed or stage == 3 else 0
    # ZeRO-2 keeps a 16-bit gradient partition besides the fp32 one; stage 0 and ZeRO-1 hold full
    # 16-bit gradients in param.grad (on the backward timeline); ZeRO-3 reduces straight into fp32.
    grads_model = 2 * psi if mixed and stage == 2 else 0
    part = 1 if stage == 0 else n
    # Offloaded states leave the GPU; on the CPU they stay in the memory being planned.
    offload = setup.offload_optimizer
    on_device = not offload or setup.device == "cpu"
    items["fp32 master weights"] = master // part if on_device else 0
    items["optimizer states (AdamW)"] = opt // part if on_device else 0
    items["gradient partitions"] = (grads32 + grads_model) // part if on_device else 0
    buckets = {"gradient buckets (DeepSpeed)": bucket_bytes(setup, psi)}
    grad_pp = s if stage in (0, 1) else 0
    st = ModelStates(_nonzero(items), grad_pp)
    if stage == 3:
        st.items.update(_nonzero(buckets))  # allocated with the optimizer, kept
    else:
        st.backward_items.update(_nonzero(buckets))  # from the first gradient hook to the end of backward
    oversize = 0
    if stage >= 2:
        # Each gradient is allocated whole in the model dtype, then copied into a bucket and freed:
        # the largest one (a text tower's token embedding, say) is a transient of its own; one
        # larger than the bucket is reduced on its own.
        bucket = int(setup.zero_key("reduce_bucket_size"))
        oversize = sum(x for x in counts.trainable_sizes if x > bucket) * s
        st.backward_items["gradients in flight"] = max(oversize, counts.largest_trainable * s)
    largest_partition = max(counts.group_partitions(1 if stage == 0 else n), default=0)
    if stage == 0:
        st.step_items["gradients"] = psi * s
        if not mixed:
            # The engine's all-reduce after backward (buffered_allreduce_fallback) flattens the
            # gradients into chunks of 5e8 elements (MEMORY_OPT_ALLREDUCE_SIZE), one rank or many.
            flat = min(psi, ALLREDUCE_CHUNK + counts.largest_trainable) * s
            st.reduction_items.update({"gradients": psi * s, "flattened gradients (all-reduce)": flat})
    elif stage in (1, 2) and not mixed and not offload:
        _fp32_zero12(st, counts, setup, buckets)
    elif stage == 1:
        st.step_items["gradients"] = psi * s  # param.grad, full, in the model dtype
    if stage == 3 or (stage == 2 and (mixed or offload)):
        st.step_items["gradients larger than the bucket"] = oversize  # kept to the step
    if stage == 3 and not offload:
        # _prepare_fp32_grad_for_sub_group flattens each group's views of the fp32 gradient buffer
        # into a new tensor for the optimizer: one group's partition at a time.
        st.step_items["flattened gradient partition (one group)"] = 4 * largest_partition
    st.step_items = _nonzero(st.step_items)
    return st


ALLREDUCE_CHUNK = 500_000_000  # deepspeed.runtime.engine.MEMORY_OPT_ALLREDUCE_SIZE


def _fp32_zero12(st: ModelStates, counts: ParamCounts, setup: StateSetup, buckets: dict[str, int]) -> None:
    """fp32 ZeRO-1/2 without offload (DeepSpeedZeroOptimizer, the path the CPU runs): the gradients
    of the parameters that overlap this rank's partitions are copied into one buffer in the model
    dtype (``grads_in_partition``, allocated at the first bucket reduction); at the step each group's
    gradient views are flattened into a new fp32 tensor for the optimizer, one group at a time, while
    the buffer (freed with the last group's views) is still alive."""
    psi, n, s = counts.trainable, setup.world, BYTES[setup.precision]
    bucket = int(setup.zero_key("reduce_bucket_size"))
    in_part = counts.in_partition(n) * s
    contiguous = setup.zero_key("contiguous_gradients")
    name = "gradient partition buffer"
    if setup.stage == 1:
        if contiguous:
            # After backward (overlap_comm off) reduce_gradients moves param.grad into the bucket
            # (freeing it) and, at the first reduction, allocates the partition buffer: the first
            # bucket's worth of gradients has left param.grad by then, the rest has not.
            st.reduction_items.update(
                {**buckets, "gradients (not yet reduced)": (psi - min(bucket, psi)) * s, name: in_part}
            )
            st.step_items[name] = in_part
        else:
            st.step_items["gradients"] = psi * s
    else:
        if contiguous:
            st.partition_after = (min(bucket, psi), in_part)  # allocated at the first reduction
            st.reduction_items.update({**buckets, name: in_part})  # the last bucket, at the end of backward
        st.step_items[name] = in_part
    st.step_items["flattened gradient partition (one group)"] = 4 * max(counts.group_partitions(n))


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
