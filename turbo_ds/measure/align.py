"""Measure the peak memory of a video_text alignment evaluation (HTM-Align protocol) in a fresh process:
the task built from a config, the loader its alignment evaluation asks for, and the trainer's
``evaluate`` on a one-rank engine, as ``scripts/eval.py`` runs it.

    python -m turbo_ds.measure.align --config-json '{...}' [--ds_config D]

prints one ``MEASURED {json}`` line. Memory is the process's resident set (RSS: the decoded frames,
the batch, activations, everything), so set ``data.num_workers: 0`` to decode in the process that is
measured. ``rss_before_mb`` is the RSS once the task and engine are built; ``peak_rss_mb`` is the peak
during the evaluation alone (Linux: the high-water mark is reset through ``/proc/self/clear_refs``
before it starts; elsewhere the process's lifetime peak, setup included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULT = "MEASURED "
ZERO0 = str(Path(__file__).resolve().parents[2] / "ds_configs" / "zero0.json")


def _status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (None without /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "reset the peak resident set size" (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(cfg_dict: dict, ds_config: str) -> dict:
    """One alignment evaluation of ``cfg_dict`` in this process: its peak memory and metrics."""
    import resource

    from turbo_ds.config import config_from_dict
    from turbo_ds.engine import distributed
    from turbo_ds.engine.engine import Engine, resolve_ds_config
    from turbo_ds.loop.data import build_loader
    from turbo_ds.loop.evaluation import evaluate
    from turbo_ds.loop.rng import seed_everything
    from turbo_ds.tasks import build_task

    cfg = config_from_dict(cfg_dict)
    rank, world = distributed.init_distributed()
    seed_everything(cfg.seed)  # the same weights in every measurement (as scripts/eval.py seeds)
    task = build_task(cfg)
    engine = Engine(task, resolve_ds_config(ds_config, cfg, world), cfg)
    (spec,) = task.eval_specs(split=task.options.align_split)
    loader = build_loader(cfg, spec.data, spec.split, rank, world, Path(cfg.output_dir))
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    metrics = evaluate(engine, loader, spec.make_evaluator(), prefix="align")
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") if reset else None
    if peak is None:  # ru_maxrss is KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "peak_rss_mb": peak,
        "rss_before_mb": rss_before,
        "peak_is_evaluation_only": reset,
        "items": len(loader),
        "eval_s": seconds,
        "metrics": metrics,
    }
    loader.close()
    distributed.destroy()
    return result


def measure_alignment(cfg_dict: dict, ds_config: str = ZERO0, timeout_s: float = 1800) -> dict:
    """:func:`worker` in a fresh Python process (nothing of this one's memory counts), a world of its
    own: this process's rank variables and port (a process group of its own, say) are not inherited."""
    from turbo_ds.engine.distributed import free_port
    from turbo_ds.measure.launch import rank_env

    env = rank_env(0, 1, free_port())
    cmd = [sys.executable, "-m", "turbo_ds.measure.align", "--config-json", json.dumps(cfg_dict)]
    cmd += ["--ds_config", ds_config]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"alignment measurement exited with {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len(RESULT) :])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-json", required=True, help="the training config as a JSON object")
    ap.add_argument("--ds_config", default=ZERO0)
    args = ap.parse_args(argv)
    print(RESULT + json.dumps(worker(json.loads(args.config_json), args.ds_config)), flush=True)


if __name__ == "__main__":
    main()
