"""What many test modules share: the repo's paths, the tiny training config, launching scripts on one
or several local ranks, rank summaries, a free port. Imported as ``from helpers import ...`` (pytest puts
``tests/`` on the path); no test module imports another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from turbo_ds.engine.distributed import free_port
from turbo_ds.measure import launch as launching
from turbo_ds.measure.launch import LAUNCH_ENV_KEYS

__all__ = [
    "LAUNCH_ENV_KEYS",
    "PY",
    "ROOT",
    "STEPS",
    "clean_env",
    "free_port",
    "launch",
    "resume_copy",
    "set_rank_env",
    "summaries",
    "tiny_config",
    "write_config",
]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STEPS = 8


def clean_env() -> dict[str, str]:
    """This environment without a launcher's variables, with the repo on PYTHONPATH."""
    return launching.clean_env(PYTHONPATH=str(ROOT))


def tiny_config(data_dir: Path, out_dir: Path, **sections) -> dict:
    cfg = {
        "output_dir": str(out_dir),
        "seed": 0,
        "model": {"name": "vit_debug"},
        "token_dropout": {"drop_ratio": 0.5},
        "pmae": {"enabled": True, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "data": {
            "index": str(data_dir / "actions.parquet"),
            "root": str(data_dir),
            "num_frames": 4,
            "frame_stride": 2,
            "img_size": 32,
            "test_split": "val",
            "test_clips": 2,
        },
        "optim": {"micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 1, "weight_decay": 0.0},
        "train": {"max_steps": STEPS, "eval_every": 4, "log_every": 1, "progress_bar": False},
        "checkpoint": {"every_steps": 4},
        "tracking": {"experiment": "test_train"},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(
    args: list[str], nprocs: int, timeout: int = 300, launcher: str = "torchrun"
) -> subprocess.CompletedProcess:
    """``python args`` on one process, or on ``nprocs`` local ranks under ``launcher``: torchrun (quicker
    to start) or ``"deepspeed"``, the README's launcher, which the reference run (conftest.run_a),
    tests/test_launchers.py, tests/test_exits.py and the preemption test use."""
    cmd = launching.launch_command(args, nprocs, free_port(), launcher)
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def resume_copy(run_dir: Path, tag: str, out: Path, cfg_path: Path, **config_updates) -> None:
    """Run ``run_dir``'s resolved config again in ``out`` from a copy of its checkpoint ``tag``, on 2
    ranks with ZeRO-2 and ``--resume latest``."""
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(run_dir / "checkpoints" / tag, out / "checkpoints" / tag)
    (out / "checkpoints" / "latest").write_text(tag)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())  # the resolved config the run wrote
    cfg["output_dir"] = str(out)
    for section, values in config_updates.items():
        cfg[section].update(values)
    write_config(cfg, cfg_path)
    launch(
        [
            "scripts/train.py",
            "--ds_config",
            "ds_configs/zero2.json",
            "--config",
            str(cfg_path),
            "--resume",
            "latest",
        ],
        nprocs=2,
    )


def summaries(out_dir: Path, world: int) -> list[dict]:
    return [json.loads((out_dir / f"rank_summary_{r}.json").read_text()) for r in range(world)]


def set_rank_env(rank: int, world: int, port: int) -> None:
    """What a launcher gives rank ``rank`` of ``world`` on this machine (one thread each)."""
    import torch

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
