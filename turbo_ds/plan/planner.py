"""The planner: a config (or a :class:`Workload`) in, the itemised per-rank peak out.

peak = max(backward peak, optimizer-step peak), where
- backward peak = model states alive for the whole step + the gradients produced so far + the
  activations at the worst moment of backward (:func:`turbo_ds.plan.activations.activation_timeline`);
- optimizer-step peak = model states + every gradient + the optimizer's temporaries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from turbo_ds.plan.activations import activation_timeline
from turbo_ds.plan.model_states import StateSetup, model_states
from turbo_ds.plan.params import ParamCounts
from turbo_ds.plan.workload import BYTES, Workload

MiB = 2**20


@dataclass
class MemoryPlan:
    """Per-rank peak bytes, itemised (``items``, whose sum is ``total``), at ``phase`` (backward or
    optimizer step); ``notes``: what the prediction does not cover."""

    items: dict[str, int]
    phase: str
    workload: Workload
    setup: StateSetup
    counts: ParamCounts
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.items.values())

    @property
    def total_mb(self) -> float:
        return self.total / MiB

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "predicted_mb": round(self.total_mb, 2),
            "phase": self.phase,
            "items_mb": {k: round(v / MiB, 3) for k, v in self.items.items()},
            "workload": {
                "batch_size": w.batch_size,
                "num_frames": w.num_frames,
                "img_size": w.vit.img_size,
                "tokens": w.tokens,
                "kept_tokens": w.kept,
                "reconstructed_tokens": w.reconstructed,
                "drop_ratio": w.drop_ratio,
                "checkpoint_blocks": w.checkpoint_blocks,
                "precision": w.precision,
                "attention": w.attention,
                "device": w.device,
            },
            "model_states": dataclasses.asdict(self.setup),
            "params": {"total": self.counts.total, "trainable": self.counts.trainable},
            "notes": self.notes,
        }


def optimizer_temporaries(counts: ParamCounts, setup: StateSetup, device: str) -> int:
    """AdamW's step temporaries: torch's AdamW computes ``sqrt(v) / c`` out of place, two tensors
    the size of what it updates at once: every parameter together on CUDA (the multi-tensor path),
    one parameter at a time on the CPU, where DeepSpeed (ZeRO-1/2/3) hands it one flat partition.
    DeepSpeed's FusedAdam (CUDA) and CPU Adam (offload) update in place."""
    s = BYTES[setup.precision]
    if setup.engine == "torch":
        return counts.trainable * s if device == "cuda" else 2 * max(counts.sizes, default=0) * s
    if device == "cuda" or setup.offload_optimizer:
        return 0
    unit = counts.trainable // setup.world if setup.stage >= 1 else max(counts.sizes, default=0)
    return 2 * unit * 4  # fp32 states


def plan(
    workload: Workload, counts: ParamCounts, setup: StateSetup, notes: list[str] | None = None
) -> MemoryPlan:
    """The itemised peak of one rank (module docstring)."""
    states = model_states(counts, setup)
    g = states.grad_bytes_per_param
    acts = activation_timeline(workload, [n * g for n in counts.encoder_blocks], counts.after_blocks * g)
    backward = {**states.items, **acts.items}
    if acts.grads_bytes:
        backward["gradients (so far in backward)"] = acts.grads_bytes
    step = {**states.items, **states.step_items}
    if setup.engine == "deepspeed" and setup.stage >= 2:
        # Each gradient is allocated whole in the model dtype, then copied into a bucket and freed:
        # the largest one (a text tower's token embedding, say) is a transient of its own; one larger
        # than the bucket is reduced on its own and kept until the step.
        s = BYTES[setup.precision]
        bucket = int(setup.zero_key("reduce_bucket_size"))
        oversize = sum(n for n in counts.trainable_sizes if n > bucket) * s
        backward["gradients in flight"] = max(oversize, counts.largest_trainable * s)
        if oversize:
            step["gradients larger than the bucket"] = oversize
    if g:
        step["gradients"] = counts.trainable * g
    tmp = optimizer_temporaries(counts, setup, workload.device)
    if tmp:
        step["optimizer step temporaries"] = tmp
    step["input clips"] = acts.items.get("input clips", 0)
    if sum(step.values()) > sum(backward.values()):
        items, phase = step, "optimizer step"
    else:
        items, phase = (
            backward,
            f"backward (block {acts.peak_block})"
            if acts.peak_block < workload.vit.depth
            else "start of backward",
        )
    return MemoryPlan(
        {k: v for k, v in items.items() if v}, phase, workload, setup, counts, list(notes or [])
    )
