"""Questions a memory plan answers against a budget: does it fit, the largest micro batch and frame
count that fit, and which drop ratio or checkpointing would make a config that does not fit, fit."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from turbo_ds.plan.model_states import StateSetup
from turbo_ds.plan.params import ParamCounts
from turbo_ds.plan.planner import MemoryPlan, plan
from turbo_ds.plan.workload import Workload

_UNITS = {
    "": 2**30,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}
# Device memory of common GPUs (what the driver reports as total, rounded down).
GPUS = {
    "v100-16gb": 16 * 2**30,
    "v100-32gb": 32 * 2**30,
    "t4": 15 * 2**30,
    "a10": 22 * 2**30,
    "rtx3090": 24 * 2**30,
    "rtx4090": 24 * 2**30,
    "l4": 22 * 2**30,
    "a6000": 48 * 2**30,
    "l40s": 44 * 2**30,
    "a100-40gb": 40 * 2**30,
    "a100-80gb": 80 * 2**30,
    "h100": 80 * 2**30,
    "h100-80gb": 80 * 2**30,
    "h200": 139 * 2**30,
    "b200": 178 * 2**30,
}
DROP_RATIOS = (0.5, 0.75, 0.9, 0.95)
MAX_BATCH, MAX_FRAMES = 4096, 16384  # search caps


def parse_memory(text: str) -> int:
    """``"80GiB"``, ``"40GB"``, ``"24576MiB"``, ``"24"`` (GiB) or a GPU name (``a100-80gb``, ``h100``)
    -> bytes; anything else is a ValueError naming the accepted forms."""
    key = str(text).strip().lower().replace(" ", "")
    if key in GPUS:
        return GPUS[key]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", key)
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(
            f"unknown GPU memory size {text!r}: give a size like 80GiB, 40GB, 24576MiB or 24 (GiB), "
            f"or a GPU name: {', '.join(sorted(GPUS))}"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class FitReport:
    budget_bytes: int
    fits: bool
    headroom_bytes: int
    max_micro_batch: int
    max_frames: int
    suggestions: list[str]

    def to_dict(self) -> dict:
        return {
            "budget_mb": round(self.budget_bytes / 2**20, 1),
            "fits": self.fits,
            "headroom_mb": round(self.headroom_bytes / 2**20, 1),
            "max_micro_batch": self.max_micro_batch,
            "max_frames": self.max_frames,
            "suggestions": self.suggestions,
        }


def largest(fits: Callable[[int], bool], lo: int, cap: int) -> int:
    """The largest ``v`` in ``[lo, cap]`` with ``fits(v)`` (monotone), or ``lo - 1`` when none fits."""
    if not fits(lo):
        return lo - 1
    hi = lo
    while hi < cap and fits(min(cap, hi * 2)):
        hi = min(cap, hi * 2)
    if hi == cap:
        return cap
    top = min(cap, hi * 2)  # fits(hi) and not fits(top)
    while top - hi > 1:
        mid = (hi + top) // 2
        hi, top = (mid, top) if fits(mid) else (hi, mid)
    return hi


def fit_report(
    workload: Workload,
    counts: ParamCounts,
    setup: StateSetup,
    budget: int,
    max_batch: int = MAX_BATCH,
    max_frames: int = MAX_FRAMES,
) -> FitReport:
    """Check ``workload`` against ``budget`` bytes per rank and search the batch / frames / drop ratio."""

    def total(w: Workload) -> int:
        return plan(w, counts, setup).total

    base = total(workload)
    tub = workload.vit.tubelet_size
    best_batch = largest(lambda b: total(workload.replace(batch_size=b)) <= budget, 1, max_batch)
    frames = largest(lambda k: total(workload.replace(num_frames=k * tub)) <= budget, 1, max_frames // tub)
    suggestions = []
    if base > budget:
        suggestions = fixes(workload, total, budget)
    return FitReport(budget, base <= budget, budget - base, best_batch, frames * tub, suggestions)


def fixes(workload: Workload, total: Callable[[Workload], int], budget: int) -> list[str]:
    """The smallest changes (checkpointing, then higher drop ratios) that bring the peak under budget."""
    depth = workload.vit.depth
    out = []
    options = []
    if workload.checkpoint_blocks < depth:
        options.append(("model.activation_checkpointing=torch", workload.replace(checkpoint_blocks=depth)))
    for r in DROP_RATIOS:
        if r > workload.drop_ratio:
            options.append((f"token_dropout.drop_ratio={r}", workload.replace(drop_ratio=r)))
            if workload.checkpoint_blocks < depth:
                options.append(
                    (
                        f"token_dropout.drop_ratio={r} + model.activation_checkpointing=torch",
                        workload.replace(drop_ratio=r, checkpoint_blocks=depth),
                    )
                )
    for label, w in options:
        t = total(w)
        if t <= budget:
            out.append(f"{label}: {t / 2**20:,.0f} MiB")
            if len(out) == 3:
                break
    if not out:
        out.append(
            "nothing tried fits: lower optim.micro_batch_size or data.num_frames, or use a higher ZeRO stage / offload"
        )
    return out


def describe(plan_: MemoryPlan) -> str:
    """The itemised table the CLI prints."""
    width = max(len(k) for k in plan_.items) + 2
    lines = [f"  {'item':<{width}} {'MiB':>10}"]
    for k, v in plan_.items.items():
        lines.append(f"  {k:<{width}} {v / 2**20:>10,.1f}")
    lines.append(f"  {'predicted peak per rank':<{width}} {plan_.total_mb:>10,.1f}   ({plan_.phase})")
    return "\n".join(lines)
