"""Memory the loop reports: the process's peak (every ``train/*`` record) and the peak of its first
step beside the planner's prediction for the config (``memory/*``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA allocator memory on GPU, peak resident set size on the CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


class FirstStepMemory:
    """:meth:`measure` around a step: the first time (when ``enabled``), the step's peak memory is
    measured (the CUDA allocator; on the CPU the live tensors at its start plus the profiler's count
    during it), maxed over ranks and logged beside the planner's prediction; later calls do nothing."""

    def __init__(self, enabled: bool, engine, cfg, ds_config: dict, tracker, log: Callable[[str], None]):
        self.pending = enabled
        self.engine, self.cfg, self.ds_config, self.tracker, self.log = engine, cfg, ds_config, tracker, log

    @contextlib.contextmanager
    def measure(self):
        if not self.pending:
            yield
            return
        self.pending = False
        from turbo_ds.engine.memory import PeakMemory, live_tensor_bytes

        dev = self.engine.device
        baseline = live_tensor_bytes() if dev.type == "cpu" else 0
        with PeakMemory(dev, baseline_bytes=baseline) as mem:
            yield
        measured = float(self.engine.all_reduce_max(torch.tensor(mem.peak_mb)))
        self._log_plan(measured, mem.method)

    def _log_plan(self, measured_mb: float, method: str) -> None:
        from turbo_ds.plan import plan
        from turbo_ds.plan.from_config import plan_inputs

        eng = self.engine
        try:
            predicted = plan(*plan_inputs(self.cfg, self.ds_config, eng.world_size, eng.device.type))
        except Exception as e:  # noqa: BLE001 - the planner must never stop a run
            self.log(f"memory: no prediction for this config ({type(e).__name__}: {e})")
            return
        err = 100.0 * (predicted.total_mb / max(measured_mb, 1e-9) - 1)
        self.log(
            f"memory: predicted peak {predicted.total_mb:,.1f} MiB per rank ({predicted.phase}), measured "
            f"{measured_mb:,.1f} MiB on the first step ({method}): {err:+.1f}%"
        )
        metrics = {"memory/predicted_peak_mb": predicted.total_mb, "memory/measured_peak_mb": measured_mb}
        metrics.update({f"memory/plan/{k}_mb": v / 2**20 for k, v in predicted.items.items()})
        self.tracker.log_metrics(
            {k.replace(" ", "_").replace("(", "").replace(")", ""): v for k, v in metrics.items()}, step=0
        )
