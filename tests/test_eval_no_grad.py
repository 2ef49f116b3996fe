"""Every evaluation forward of every task runs without autograd, during training and in scripts/eval.py:
a graph recorded there costs the memory of training (long-video ``full`` evaluation at many frames,
HTM-Align's every second of a video) for metrics that are the same without it."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import LAUNCH_ENV_KEYS, ROOT, tiny_config

from turbo_ds.tasks import Task
from turbo_ds.tasks.registry import get_task_class, list_tasks


def _task_configs(data, out, tmp_path) -> dict[str, dict]:
    """A 2-step config per registered task, evaluated after step 1 and at the end."""
    short = {"model": {"name": "vit_debug", "overrides": {"pos_embed": "learned", "pool": "mean"}}}
    weights = tmp_path / "clip_encoder.pt"
    torch.save(_clip_encoder().state_dict(), weights)
    long_data = {"index": str(data / "long.parquet"), "num_frames": 8, "test_split": None}
    sections = {
        "classification": {"task": {"name": "classification"}},
        "video_text": {
            "data": {"index": str(data / "vlp.parquet"), "test_split": None},
            "task": {
                "name": "video_text",
                "text_model": "turbo-tiny",
                "context_length": 16,
                "align_index": str(data / "vlp_align.parquet"),
            },
        },
        "long_video": {
            **short,
            "data": long_data,
            "task": {"name": "long_video", "eval_num_frames": 16, "eval_modes": ["full", "chunked"]},
        },
        "long_video_two_stage": {
            "model": {**short["model"], "pretrained": str(weights)},
            "pmae": {"enabled": False},
            "data": long_data,
            "task": {"name": "long_video_two_stage", "clip_frames": 4, "eval_num_frames": 16},
        },
    }
    common = {
        "train": {"max_steps": 2, "eval_every": 1, "log_every": 1, "progress_bar": False},
        "checkpoint": {"every_steps": 0, "save_final": True},
        "tracking": {"enabled": False},
    }
    return {name: tiny_config(data, out / name, **common, **s) for name, s in sections.items()}


def _clip_encoder():
    from turbo_ds.models import create_model

    return create_model("vit_debug", num_frames=4, pos_embed="learned", pool="mean")


@pytest.mark.slow
def test_every_evaluation_forward_of_every_task_runs_without_autograd(demo_data, tmp_path, monkeypatch):
    from turbo_ds.loop import eval_cli, train_cli

    for k in LAUNCH_ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    configs = _task_configs(demo_data, tmp_path / "runs", tmp_path)
    builtin = {n for n in list_tasks() if get_task_class(n).__module__.startswith("turbo_ds.")}
    assert set(configs) == builtin, "a new task needs a config here"
    seen: list[tuple[str, bool]] = []  # (phase, grad enabled) of every task forward in eval mode

    def record(module, args):
        if isinstance(module, Task) and not module.training:
            seen.append((phase, torch.is_grad_enabled()))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        for name, cfg in configs.items():
            cfg_path = tmp_path / f"{name}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            phase = f"{name}: training"
            train_cli.main(
                ["--config", str(cfg_path), "--ds_config", str(ROOT / "ds_configs" / "zero0.json")]
            )
            phase = f"{name}: scripts/eval.py"
            out = tmp_path / "runs" / name
            eval_cli.main(
                ["--checkpoint", str(out / "checkpoints"), "--output_dir", str(out / "eval")]
                + ["--split", "val" if name != "video_text" else "test"]
            )
    finally:
        hook.remove()
    phases = {p for p, _ in seen}
    assert phases == {f"{n}: {w}" for n in configs for w in ("training", "scripts/eval.py")}
    assert [p for p, grad in seen if grad] == []
