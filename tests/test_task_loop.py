"""The loop is task-generic: it trains and evaluates a task defined here, which it has never heard of,
through the registry (and through a ``module:Class`` import path), with that task's own data spec,
evaluator and summary line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import LAUNCH_ENV_KEYS

from turbo_ds.config import ConfigError, config_from_dict
from turbo_ds.tasks import DataSpec, EvalSpec, Task, TaskOutput, build_task, get_task_class, register_task

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BrightnessOptions:
    target_scale: float = 1.0


class AbsErrorEvaluator:
    """Mean absolute error over every clip of every rank, and the number of distinct clips."""

    def __init__(self):
        self.err, self.ids = [], []

    def update(self, batch, out):
        self.err.append(out.extras["abs_err"].cpu().numpy())
        self.ids.append(np.asarray(batch["sample_idx"]))

    def compute(self, comm):
        parts = comm.all_gather_object((self.err, self.ids))
        err = np.concatenate([e for p in parts for e in p[0]])
        ids = np.concatenate([i for p in parts for i in p[1]])
        return {"abs_err": float(err.mean()), "num_clips": float(len(set(ids.tolist())))}


@register_task("toy_brightness")
class BrightnessTask(Task):
    """Regress the mean pixel value of a clip from the pooled video feature."""

    Options = BrightnessOptions
    headline = ("abs_err",)

    def __init__(self, model, options, cfg):
        super().__init__()
        self.model, self.options, self.cfg = model, options, cfg

    @classmethod
    def from_config(cls, cfg):
        from turbo_ds.tasks import build_model

        return cls(build_model(cfg, num_classes=1), cls.parse_options(cfg.task.options), cfg)

    def train_data(self):
        return DataSpec(sampler="dense", train=True)

    def eval_specs(self, split=None):
        return [
            EvalSpec(
                split or self.cfg.data.val_split, DataSpec(sampler="dense", train=False), AbsErrorEvaluator
            )
        ]

    def summary(self, metrics, prefix):
        return f"toy {prefix}: brightness error {metrics[f'{prefix}/abs_err']:.4f} on {int(metrics[f'{prefix}/num_clips'])} clips"

    def forward(self, batch):
        video = batch["video"]
        target = video.float().mean(dim=(1, 2, 3, 4)) * self.options.target_scale
        pred = self.model(video).logits.float()[:, 0]
        loss = (pred - target).pow(2).mean()
        return TaskOutput(
            loss=loss,
            losses={"mse": loss},
            batch_size=int(video.shape[0]),
            extras={"abs_err": (pred - target).abs().detach()},
        )


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [sys.executable, "-m", "data_index", "demo", "--out", str(out), "--size", "tiny"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


def _config(demo_data: Path, out: Path, task: dict) -> dict:
    return {
        "output_dir": str(out),
        "model": {"name": "vit_debug"},
        "token_dropout": {"drop_ratio": 0.5},
        "data": {"index": str(demo_data / "actions.parquet"), "num_frames": 4, "img_size": 32},
        "task": task,
        "optim": {"micro_batch_size": 2, "lr": 1e-3},
        "train": {"max_steps": 3, "eval_every": 2, "log_every": 1, "progress_bar": False},
        "checkpoint": {"every_steps": 0, "save_final": False},
        "tracking": {"enabled": False},
    }


@pytest.mark.slow
def test_loop_runs_a_task_it_has_never_heard_of(demo_data, tmp_path, monkeypatch, capsys):
    from turbo_ds.loop import train_cli

    for k in LAUNCH_ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    cfg_path = tmp_path / "toy.yaml"
    cfg = _config(demo_data, tmp_path / "out", {"name": "toy_brightness", "target_scale": 2.0})
    cfg["train"]["progress_bar"] = True
    cfg_path.write_text(yaml.safe_dump(cfg))
    final = train_cli.main(
        ["--config", str(cfg_path), "--ds_config", str(ROOT / "ds_configs" / "zero0.json")]
    )
    assert final["step"] == 3.0
    assert final["val/num_clips"] == 4.0  # every val clip of the tiny demo, once
    assert 0.0 <= final["val/abs_err"] < 10.0
    assert "train/mse" in final and "val/top1" not in final
    printed = capsys.readouterr().out
    assert "toy val: brightness error" in printed
    # rank 0's bars: the training steps, and each evaluation's batches (4 val clips, 2 a batch)
    assert "train: " in printed and "3/3" in printed
    assert "eval val: " in printed and "/2 [" in printed
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["task"]["target_scale"] == 2.0  # resolved options are written flat, as in a config


def test_task_by_import_path_and_option_errors():
    cls = get_task_class(f"{__name__}:BrightnessTask")
    assert cls is BrightnessTask
    with pytest.raises(ConfigError, match="unknown task"):
        get_task_class("no_such_task")
    with pytest.raises(ConfigError, match="cannot import"):
        get_task_class("no_such_module:Task")
    cfg = config_from_dict({"task": {"name": "toy_brightness", "target_scal": 1.0}})
    with pytest.raises(ConfigError, match="'task.target_scal'"):
        build_task(cfg)
    cfg = config_from_dict({"task": {"name": "classification", "label_smoothing": 2.0, "num_classes": 3}})
    with pytest.raises(ConfigError, match="task.label_smoothing"):
        build_task(cfg)


def test_moved_num_classes_key_is_named():
    with pytest.raises(ConfigError, match="'data.num_classes' is now 'task.num_classes'"):
        config_from_dict({"data": {"num_classes": 4}})


def test_task_output_is_a_dict_deepspeed_can_walk():
    out = TaskOutput(loss=torch.tensor(1.0), losses={"a": torch.tensor(1.0)}, batch_size=2)
    assert isinstance(out, dict) and out["loss"] is out.loss
    out["loss"] = torch.tensor(2.0)  # what ZeRO-3's hooks do in place
    assert float(out.loss) == 2.0
    assert json.dumps(sorted(out)) == '["batch_size", "extras", "loss", "losses", "metrics"]'


@pytest.mark.slow
def test_data_wait_is_measured_and_a_data_bound_run_is_told_what_to_change(
    demo_data, tmp_path, monkeypatch, capsys
):
    """Every logging window records how long the steps waited for data; a window that waited more than
    20% of its time (after the first, warm-up, step) prints one line with the workers that would keep up."""
    import math
    import time

    from turbo_ds.data.dataset import VideoDataset
    from turbo_ds.loop import train_cli

    for k in LAUNCH_ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    load = VideoDataset.load

    def slow_load(self, *args, **kwargs):  # decoding that costs 0.5 s a clip
        time.sleep(0.5)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(VideoDataset, "load", slow_load)
    cfg = _config(demo_data, tmp_path / "out", {"name": "toy_brightness"})
    cfg["train"].update(max_steps=4, eval_every=0)
    cfg["data"]["num_workers"] = 0
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg))
    train_cli.main(
        ["--config", str(tmp_path / "toy.yaml"), "--ds_config", str(ROOT / "ds_configs" / "zero0.json")]
    )
    history = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for h in history:
        # 2 clips a batch at >= 0.5 s each, all of it waited for in this process (no workers)
        assert h["train/data_load_s_per_batch"] >= 1.0
        assert 1.0 <= h["train/data_wait_s"] <= h["train/step_time_s"]
        assert 0.3 < h["train/data_wait_frac"] <= 1.0
        model_s = h["train/step_time_s"] - h["train/data_wait_s"]  # one micro batch a step here
        assert h["train/data_workers_needed"] == math.ceil(h["train/data_load_s_per_batch"] / model_s)
    advice = [line for line in capsys.readouterr().out.splitlines() if "waited" in line]
    assert len(advice) == 1, advice  # once per run
    assert "data.num_workers (now 0)" in advice[0] and "worker(s) per rank would remove the wait" in advice[0]
    assert "data.backend (now auto: " in advice[0]  # and which backend auto chose


def test_workers_needed():
    from turbo_ds.loop.data_wait import workers_needed

    assert workers_needed(0.4, 0.1) == 4  # each worker makes a batch in 0.4 s, the model eats one in 0.1 s
    assert workers_needed(0.41, 0.1) == 5
    assert workers_needed(0.05, 0.1) == 1
    assert workers_needed(0.0, 0.1) == 1
