"""Measure a real training step of the model core (torch only): the planner's ground truth.

``measure_core_step(workload, device)`` builds the encoder (+ Partial-MAE, + a classifier head) the
workload describes (:mod:`turbo_ds.measure.core_step`), runs ``steps`` full training steps (forward,
backward, AdamW step) on synthetic clips, and returns the peak tensor memory of the whole process
(model states included) measured by :class:`turbo_ds.engine.memory.PeakMemory`. No deepspeed, data
loader or tracking is involved, so it runs on a bare GPU machine. :func:`measure_in_fresh_process`
runs it in a new process, so that the measurement sees every allocation from an empty start
(``python -m turbo_ds.measure.probe`` does the same from a shell).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from turbo_ds.engine.memory import PeakMemory
from turbo_ds.measure.core_step import build_core, train_step
from turbo_ds.plan.workload import DecoderShape, Workload


def synthetic_batch(workload: Workload, device: torch.device, generator: torch.Generator):
    """Random clips and labels of the workload's shape, drawn from ``generator`` (on the CPU, then moved)."""
    c = workload.vit
    video = torch.randn(
        workload.batch_size, c.in_chans, c.num_frames, c.img_size, c.img_size, generator=generator
    ).to(device)
    labels = torch.randint(0, max(1, c.num_classes), (workload.batch_size,), generator=generator).to(device)
    return video, labels


def measure_core_step(workload: Workload, device: str | torch.device = "cpu", steps: int = 2) -> dict:
    """Peak memory of ``steps`` training steps of ``workload``, counted from before the model exists.

    Returns ``{"peak_bytes", "peak_mb", "method", "step_s", "loss"}``. The attention kernel is the one
    torch picks on ``device`` (``workload.attention`` only informs the planner)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    with PeakMemory(device) as mem:
        model, optimizer = build_core(workload, device)
        video, labels = synthetic_batch(workload, device, gen)
        times, loss = [], float("nan")
        for _ in range(steps):
            t0 = time.perf_counter()
            # Read at once: no step's losses live on into the next step's peak.
            loss = float(train_step(model, optimizer, video, labels).loss)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return {
        "peak_bytes": mem.peak_bytes,
        "peak_mb": mem.peak_mb,
        "method": mem.method,
        "step_s": min(times),
        "loss": loss,
    }


# What every probe process needs imported: forked from a server that holds them, a probe does not
# import them again (torch, and torch._dynamo, which AdamW imports on first use).
_PRELOAD = ["torch", "torch._dynamo", "turbo_ds.models", __name__]


def measure_in_fresh_process(workload: Workload, device: str = "cpu", steps: int = 2) -> dict:
    """:func:`measure_core_step` in a new process of its own, its allocator and CUDA context fresh.

    The process is forked from a ``forkserver`` that has imported torch and turbo_ds but never made a
    tensor or touched CUDA, so each probe still starts from an empty memory state. Its stderr (the
    profiler's banners) is kept out of the caller's and shown only when the probe dies (a CPU probe
    killed for memory): ``RuntimeError``. A probe that raises passes its exception on
    (``torch.OutOfMemoryError`` on a GPU that runs out)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # read when the server starts: once per calling process
    with (
        tempfile.NamedTemporaryFile("w+", suffix=".probe.log") as log,
        ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool,
    ):
        try:
            return pool.submit(_measure_logging_to, log.name, workload, device, steps).result()
        except BrokenProcessPool as e:
            tail = "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-8:])
            raise RuntimeError(f"the probe of {workload.num_frames} frames died ({e}):\n{tail}") from e


def _measure_logging_to(log_path: str, workload: Workload, device: str, steps: int) -> dict:
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 2)
    return measure_core_step(workload, device, steps)


# ---- shell entry point: one workload as JSON in, one result as JSON out ----------------------------
def workload_to_json(w: Workload) -> str:
    import dataclasses

    return json.dumps(dataclasses.asdict(w))


def workload_from_json(text: str) -> Workload:
    from turbo_ds.models.config import ViTConfig

    d = json.loads(text)
    d["vit"] = ViTConfig(**d["vit"])
    d["decoder"] = DecoderShape(**d["decoder"]) if d.get("decoder") else None
    return Workload(**d)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", required=True, help="Workload as JSON")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    result = measure_core_step(workload_from_json(args.workload), args.device, args.steps)
    print("PROBE_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
