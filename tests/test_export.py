"""Export: ZeRO-2 shards (2 ranks) -> fp32 VideoViT weights (safetensors + JSON config) -> eval.py gives
the live model's accuracy; universal checkpoint resumes the 2-rank run on 1 rank."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import STEPS, launch, summaries, write_config

pytestmark = pytest.mark.slow  # every test here launches training processes


@pytest.fixture
def trained(run_a, tmp_path) -> Path:
    """A copy of the session's reference 2-rank ZeRO-2 run (tests/conftest.py), which these tests write
    into (a universal checkpoint beside its shards)."""
    out = tmp_path / "trained"
    shutil.copytree(run_a, out)
    return out


def test_export_load_eval_matches_live_model(trained, tmp_path):
    from safetensors import safe_open

    from turbo_ds.engine.export import consolidate, load_exported
    from turbo_ds.models import VideoViT, create_model, load_pretrained

    # An old-style ".pt" name: the export is written as safetensors + JSON beside it, and says so.
    proc = launch(
        [
            "scripts/export.py",
            "--checkpoint",
            str(trained / "checkpoints"),
            "--out",
            str(tmp_path / "vit.pt"),
        ],
        nprocs=1,
    )
    assert "wrote vit.safetensors instead of vit.pt" in proc.stdout and not (tmp_path / "vit.pt").exists()
    weights, config = tmp_path / "vit.safetensors", tmp_path / "vit.json"
    meta = json.loads(config.read_text())
    assert meta["format"] == "turbo_ds" and meta["weights"] == "vit.safetensors" and meta["step"] == STEPS
    assert meta["task"] == "classification" and meta["vit_config"]["num_classes"] == 4
    assert meta["train_config"]["train"]["max_steps"] == STEPS
    with safe_open(str(weights), framework="pt") as f:  # tensors only: the task's state dict
        assert f.metadata()["format"] == "turbo_ds" and "model.encoder.head.weight" in f.keys()  # noqa: SIM118

    model = load_exported(weights)
    assert isinstance(model, VideoViT) and not model.training and model.cfg.num_classes == 4
    # The old name the export was asked for still finds it (readers fall back to the .safetensors).
    assert torch.equal(load_exported(tmp_path / "vit.pt").head.weight, model.head.weight)
    sd, _ = consolidate(trained / "checkpoints")
    assert torch.equal(model.head.weight, sd["model.encoder.head.weight"])
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 4)
    # model.pretrained reads the same export (given as its .safetensors or its .json), no opt-in needed.
    for source in (weights, config):
        fresh = create_model("vit_debug", num_frames=4, img_size=32, num_classes=4)
        report = load_pretrained(fresh, source)
        assert report.missing == [] and report.unexpected == []
        assert torch.equal(fresh.head.weight, model.head.weight)

    proc = launch(
        [
            "scripts/eval.py",
            "--weights",
            str(weights),
            "--split",
            "val",
            "--clips",
            "2",
            "--output_dir",
            str(tmp_path / "eval"),
        ],
        nprocs=1,
    )
    assert "top-1" in proc.stdout
    got = json.loads((tmp_path / "eval" / "eval_val_metrics.json").read_text())
    live = json.loads((trained / "final_metrics.json").read_text())
    assert got["eval_val/num_samples"] == live["test/num_samples"] == 4
    assert got["eval_val/top1"] == live["test/top1"] and got["eval_val/top5"] == live["test/top5"]
    assert got["eval_val/loss"] == pytest.approx(live["test/loss"], rel=1e-5)


def test_universal_checkpoint_resumes_on_one_rank(trained, tmp_path):
    launch(["scripts/export.py", "--checkpoint", str(trained / "checkpoints"), "--universal"], nprocs=1)
    assert (
        trained / "checkpoints" / "latest_universal"
    ).read_text().strip() == f"global_step{STEPS}_universal"
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    live = json.loads((trained / "final_metrics.json").read_text())
    two_rank_checksum = summaries(trained, 2)[0]["params_checksum"]

    # Same step count: nothing to train, so the 1-rank model must be the 2-rank model.
    cfg.update(output_dir=str(tmp_path / "same"))
    cfg["tracking"]["enabled"] = False
    args = [
        "scripts/train.py",
        "--ds_config",
        "ds_configs/zero2.json",
        "--resume",
        str(trained / "checkpoints"),
        "--set",
        "checkpoint.load_universal=true",
    ]
    proc = launch([*args, "--config", str(write_config(cfg, tmp_path / "same.yaml"))], nprocs=1)
    assert f"at step {STEPS}" in proc.stdout
    (s,) = summaries(tmp_path / "same", 1)
    assert s["params_checksum"] == pytest.approx(two_rank_checksum, rel=1e-6)
    final = json.loads((tmp_path / "same" / "final_metrics.json").read_text())
    assert final["val/loss"] == pytest.approx(live["val/loss"], rel=1e-5)

    # And it trains on: two more steps on one rank.
    cfg.update(output_dir=str(tmp_path / "more"))
    cfg["train"]["max_steps"] = STEPS + 2
    launch([*args, "--config", str(write_config(cfg, tmp_path / "more.yaml"))], nprocs=1)
    (s,) = summaries(tmp_path / "more", 1)
    assert s["steps"] == [STEPS + 1, STEPS + 2] and all(math.isfinite(v) for v in s["train_loss"])
