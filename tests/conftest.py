"""Fixtures shared across test modules (session-scoped: each is made once per `make test`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import PY, ROOT, clean_env, launch, tiny_config, write_config


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The tiny demo dataset (``python -m data_index demo --size tiny``)."""
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [PY, "-m", "data_index", "demo", "--out", str(out), "--size", "tiny"],
        cwd=ROOT,
        env=clean_env(),
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def run_a(demo_data, tmp_path_factory) -> Path:
    """The reference run: uninterrupted, ``deepspeed --num_gpus 2``, ZeRO-2, ``tiny_config``
    (8 steps, checkpoints at steps 4 and 8). Tests read it; none may write into it."""
    work = tmp_path_factory.mktemp("run_a")
    out = work / "out"
    cfg = write_config(tiny_config(demo_data, out), work / "cfg.yaml")
    train = ["scripts/train.py", "--ds_config", "ds_configs/zero2.json", "--config", str(cfg)]
    launch(train, nprocs=2, launcher="deepspeed")
    return out


TINY_SWEEP_GRID = "token_dropout.drop_ratio=0,0.75"


def sweep_config(demo_data: Path, path: Path, **sections) -> Path:
    """The smallest config a sweep's runs can compare on: 4 steps, a train record every step, val at
    steps 2 and 4, no test split, no checkpoint, one process without DataLoader workers."""
    cfg = tiny_config(
        demo_data,
        path.parent / "unused",  # the sweep sets each run's output_dir
        token_dropout={"drop_ratio": 0.0},
        pmae={"enabled": False},
        data={"test_split": None, "num_workers": 0},
        train={"max_steps": 4, "eval_every": 2, "log_every": 1},
        checkpoint={"every_steps": 0, "save_final": False},
        tracking={"memory_plan": False},
    )
    for k, v in sections.items():
        cfg[k].update(v)
    return write_config(cfg, path)


@pytest.fixture(scope="session")
def tiny_sweep(demo_data, tmp_path_factory) -> Path:
    """``scripts/sweep.py`` over ``TINY_SWEEP_GRID`` (2 single-process runs of :func:`sweep_config`):
    the sweep folder, with ``sweep.json``, ``mlflow.db`` (experiment ``tiny_sweep``), ``mlartifacts/``
    and a folder per run; its stdout is in ``../../sweep.out``. Tests read it; none may write into it.
    Its store is given as ``--tracking-uri`` while ``$MLFLOW_TRACKING_URI`` names another,
    ``../../decoy.db``, which the given one must win over, in the sweep and in its runs."""
    work = tmp_path_factory.mktemp("tiny_sweep")
    cfg = sweep_config(demo_data, work / "cfg.yaml")
    folder = work / "sweeps" / "tiny_sweep"
    cmd = [PY, "scripts/sweep.py", "--config", str(cfg), "--ds_config", "ds_configs/zero0.json"]
    cmd += ["--grid", TINY_SWEEP_GRID, "--name", "tiny_sweep", "--out", str(work / "sweeps")]
    cmd += ["--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    env = {**clean_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/decoy.db"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    (work / "sweep.out").write_text(proc.stdout)  # beside the sweep folder, for tests of its output
    return folder
