"""Fixtures shared across test modules (session-scoped: each is made once per `make test`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_train import PY, ROOT, clean_env, launch, tiny_config, write_config


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
    launch(["scripts/train.py", "--ds_config", "ds_configs/zero2.json", "--config", str(cfg)], nprocs=2)
    return out
