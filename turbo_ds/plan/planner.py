"""The planner: a config (or a :class:`Workload`) in, the itemised per-rank peak out.

peak = max(backward peak, gradient-reduction peak, optimizer-step peak), where
- backward peak = model states alive for the whole step + those alive during backward (ZeRO-1/2's
  gradient buckets) + the gradients produced so far + the activations at the worst moment of
  backward (:func:`turbo_ds.plan.activations.activation_timeline`);
- gradient-reduction peak (after backward, activations freed) = model states + the reduction's
  buffers (stage 0's flattened all-reduce, ZeRO-1/2's buckets and gradient partition buffer);
- optimizer-step peak = model states + the gradients as the step holds them + DeepSpeed's flattened
  copy of one group's gradient partition + the optimizer's temporaries.
Each phase's items come from :func:`turbo_ds.plan.model_states.model_states`.
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
    phases: dict[str, int] = field(default_factory=dict)
    """Each phase's peak (bytes), the chosen one's included: backward, gradient reduction (where
    the setup has one), optimizer step."""

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
            "phases_mb": {k: round(v / MiB, 3) for k, v in self.phases.items()},
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
    one tensor at a time on the CPU: a parameter (plain torch, stage 0) or, with ZeRO-1/2/3, one
    parameter group's flat fp32 partition (DeepSpeed steps the groups one by one). DeepSpeed's
    FusedAdam (CUDA) and CPU Adam (offload) update in place."""
    s = BYTES[setup.precision]
    if setup.engine == "torch":
        return counts.trainable * s if device == "cuda" else 2 * counts.largest_trainable * s
    if device == "cuda" or setup.offload_optimizer:
        return 0
    if setup.stage == 0:
        return 2 * counts.largest_trainable * s
    return 2 * max(counts.group_partitions(setup.world), default=0) * 4  # fp32 states


def plan(
    workload: Workload, counts: ParamCounts, setup: StateSetup, notes: list[str] | None = None
) -> MemoryPlan:
    """The itemised peak of one rank (module docstring)."""
    states = model_states(counts, setup)
    acts = activation_timeline(workload, counts.encoder_blocks, counts.after_blocks, states.grads_in_backward)
    # ZeRO-1/2's buckets come with the first parameter gradient; which parameter backward reaches
    # first depends on the task's graph (a text tower's logit scale, before anything is freed): counted
    # at the start of backward too.
    backward = {**states.items, **states.backward_items, **acts.items}
    if acts.grads_bytes:
        backward["gradients (so far in backward)"] = acts.grads_bytes
    # Alive after backward too: the batch (the loop holds it) and the cached position tables.
    kept = {k: acts.items.get(k, 0) for k in ("input clips", "position tables (cached)")}
    phases = [
        (
            backward,
            f"backward (block {acts.peak_block})"
            if acts.peak_block < workload.vit.depth
            else "start of backward",
        )
    ]
    if states.reduction_items:
        phases.append(({**states.items, **states.reduction_items, **kept}, "gradient reduction"))
    step = {**states.items, **states.step_items}
    tmp = optimizer_temporaries(counts, setup, workload.device)
    if tmp:
        step["optimizer step temporaries"] = tmp
    phases.append(({**step, **kept}, "optimizer step"))
    items, phase = max(phases, key=lambda p: sum(p[0].values()))  # the first of equal peaks
    totals = {name.split(" (")[0]: sum(d.values()) for d, name in phases}
    return MemoryPlan(
        {k: v for k, v in items.items() if v}, phase, workload, setup, counts, list(notes or []), totals
    )
