"""Measure a real config: ``steps`` training steps of the trainer (its task, data, DeepSpeed engine
and ds_config) on ``world`` local processes, each counting its tensors from before anything is built
(:class:`turbo_ds.engine.memory.PeakMemory`). ``peak_bytes`` is the peak during the steps (what the
planner predicts); ``process_peak_bytes`` includes the setup (DeepSpeed's initialisation flattens and
copies the parameters, a transient that matters only for tiny models). Python's garbage collector
runs before each step (see :func:`rank_main`). Evaluation, checkpoints and
tracking are off. Weight files (``model.pretrained``, a task's weight options) are not loaded: the
model keeps its own initialisation (memory does not depend on the values) and the result names what was
skipped (``weights_not_loaded``). A rank that stops on a config or input error (a missing index or video
root: :func:`turbo_ds.cli.is_usage_error`) prints the trainer's one line, and :func:`measure_config`
raises :class:`MeasureInputError` with it.

    python -m turbo_ds.measure.run --config C --ds_config D [--set k=v] [--world N] [--steps 3]

prints one ``MEASURED {json}`` line: the per-rank peaks and their maximum, and (on the CPU) the peaks
inside the engine's backward (with the gradient reduction) and inside its optimizer step. Used by
``python -m turbo_ds.plan --measure``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

from turbo_ds.cli import EXIT_USAGE, run_cli

RESULT = "MEASURED "
ERROR_PREFIX = "turbo_ds: error: "


class MeasureInputError(ValueError):
    """A measured rank stopped on a config or input error; the message is the one the trainer prints."""


def in_phase(name: str, fn):
    """``fn`` run inside :func:`turbo_ds.engine.memory.phase` ``name``."""
    from turbo_ds.engine.memory import phase

    def wrapped(*args, **kwargs):
        with phase(name):
            return fn(*args, **kwargs)

    return wrapped


def rank_main(args) -> None:
    """One rank: train ``steps`` steps inside PeakMemory, write ``{rank, peak_bytes}`` to a file."""
    import torch

    from turbo_ds.config import load_config
    from turbo_ds.engine.distributed import device
    from turbo_ds.engine.memory import PeakMemory
    from turbo_ds.tasks import weight_files, without_weight_files

    cfg = load_config(args.config, args.overrides)
    skipped = weight_files(cfg)
    cfg = without_weight_files(cfg)
    dev = device()
    with PeakMemory(dev) as mem:
        from turbo_ds.loop.trainer import Trainer

        trainer = Trainer(cfg, args.ds_config)
        for method, name in (("backward", "backward and reduction"), ("step", "optimizer step")):
            setattr(trainer.engine, method, in_phase(name, getattr(trainer.engine, method)))
        mem.mark()  # the steps' peak, apart from DeepSpeed's initialisation transients
        for _ in range(args.steps):
            # What a previous step left in reference cycles (DeepSpeed's gradient bucket, at times)
            # lives until Python's collector runs, whose timing varies from run to run: collect it,
            # so that the peak is the step's own tensors, the same in every run.
            gc.collect()
            trainer.train_steps(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(args.result_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "rank": rank,
                "peak_bytes": mem.peak_since_mark_bytes,
                "process_peak_bytes": mem.peak_bytes,
                "method": mem.method,
                "phase_peak_bytes": mem.phase_peaks,
                "weights_not_loaded": skipped,
            },
            f,
        )
    from turbo_ds.engine import distributed

    distributed.destroy()


def measure_config(
    config: str,
    ds_config: str,
    overrides: list[str] | None = None,
    world: int = 1,
    steps: int = 3,
    timeout_s: float = 900,
) -> dict:
    """Run ``world`` rank processes of this module and collect their peaks (bytes)."""
    from turbo_ds.engine.distributed import free_port
    from turbo_ds.measure.launch import rank_env

    out_dir = tempfile.mkdtemp(prefix="turbo_plan_measure_")
    overrides = list(overrides or []) + [
        f"output_dir={out_dir}/run",
        "tracking.enabled=false",
        "checkpoint.save_final=false",
        "checkpoint.every_steps=0",
        "train.progress_bar=false",
        f"train.max_steps={max(steps, 1)}",
        "optim.warmup_steps=0",
        "token_dropout.final_dense_steps=0",
    ]
    port = str(free_port())
    procs = []
    for rank in range(world):
        cmd = [sys.executable, "-m", "turbo_ds.measure.run", "--rank-worker", "--result-dir", out_dir]
        cmd += ["--config", config, "--ds_config", ds_config, "--steps", str(steps)]
        for o in overrides:
            cmd += ["--set", o]
        procs.append(
            subprocess.Popen(
                cmd,
                env=rank_env(rank, world, port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout_s)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError(f"measurement did not finish in {timeout_s:.0f} s") from None
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if any(code == EXIT_USAGE for _, code in failed):
        # Rank 0 printed the trainer's one-line message (the others exit quietly with the same status).
        lines = [ln for log in logs for ln in log.splitlines() if ln.startswith(ERROR_PREFIX)]
        if lines:
            raise MeasureInputError(lines[0][len(ERROR_PREFIX) :])
    if failed:
        tail = "\n".join(logs[failed[0][0]].splitlines()[-15:])
        raise RuntimeError(f"measurement rank {failed[0][0]} exited with {failed[0][1]}:\n{tail}")
    ranks = []
    for rank in range(world):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            ranks.append(json.load(f))
    return {
        "peak_bytes": max(r["peak_bytes"] for r in ranks),
        "per_rank_bytes": [r["peak_bytes"] for r in ranks],
        "process_peak_bytes": max(r["process_peak_bytes"] for r in ranks),
        "method": ranks[0]["method"],
        "phase_peak_bytes": {  # CPU only: the peak inside the engine's backward, and its step
            k: max(r["phase_peak_bytes"].get(k, 0) for r in ranks) for k in ranks[0]["phase_peak_bytes"]
        },
        "weights_not_loaded": ranks[0]["weights_not_loaded"],
        "steps": steps,
        "world": world,
    }


def main(argv: list[str] | None = None) -> None:
    """A rank worker (``--rank-worker``, started by :func:`measure_config`) or the whole measurement."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--ds_config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_worker:
        rank_main(args)
        return
    print(
        RESULT
        + json.dumps(measure_config(args.config, args.ds_config, args.overrides, args.world, args.steps))
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
