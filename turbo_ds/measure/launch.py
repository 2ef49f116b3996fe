"""The one way turbo_ds launches a script on local ranks: for sweeps, benchmarks, the planner's real-run
measurement and the tests. One process runs as plain ``python SCRIPT`` (nothing to start, the same
trainer); several under the deepspeed launcher (the README's) or torchrun (one process importing torch,
where deepspeed's runner and its per-node launcher each import DeepSpeed: quicker to start)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from turbo_ds.tracking import TRACKING_URI_ENV

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"
# What a launcher sets for its ranks: a child launched from inside a run (or a test under torchrun)
# must not inherit the parent's, nor its MLflow store.
LAUNCH_ENV_KEYS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_WORLD_SIZE",
    TRACKING_URI_ENV,
)
LAUNCHERS = ("deepspeed", "torchrun")


def launch_command(
    script_args: Sequence[str],
    nprocs: int,
    master_port: int | str | None = None,
    launcher: str = "deepspeed",
) -> list[str]:
    """``[python, ...]`` running ``script_args`` (a script and its arguments) on ``nprocs`` local ranks.
    ``master_port``: the rendezvous port of a multi-rank launch (None: the launcher's default)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if nprocs <= 1:
        return [sys.executable, *script_args]
    port = [] if master_port is None else ["--master_port", str(master_port)]
    if launcher == "deepspeed":
        return [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(nprocs),
            *port,
            *script_args,
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nprocs),
        *port,
        *script_args,
    ]


def clean_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) without the launch variables, plus ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in LAUNCH_ENV_KEYS}
    env.update(extra)
    return env


def rank_env(
    rank: int, world: int, master_port: int | str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) with what a launcher gives rank ``rank`` of
    ``world`` ranks on this machine: for processes started one per rank without a launcher."""
    return {
        **(os.environ if base is None else base),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
    }


def train_args(config: str | Path, ds_config: str | Path, sets: Sequence[str] = ()) -> list[str]:
    """``scripts/train.py --config C --ds_config D --set k=v ...``."""
    args = [str(TRAIN_SCRIPT), "--config", str(config), "--ds_config", str(ds_config)]
    for item in sets:
        args += ["--set", item]
    return args


def run_training(
    name: str,
    config: str | Path,
    ds_config: str | Path,
    sets: Sequence[str],
    num_gpus: int,
    master_port: int | None = None,
) -> float:
    """One benchmark run of ``scripts/train.py`` with ``--set`` overrides, quietly (its output is shown
    only if it fails, then SystemExit); returns the launch's wall time."""
    cmd = launch_command(train_args(config, ds_config, sets), num_gpus, master_port)
    print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return wall
