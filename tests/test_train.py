"""End to end on the tiny demo data: 2-rank ZeRO-2 launch (loss falls, ranks agree), MLflow run,
exact resume, single-process ``python scripts/train.py`` on ZeRO-3, non-finite loss handling."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers import (
    LAUNCH_ENV_KEYS,
    STEPS,
    launch,
    summaries,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow  # every test here launches training processes


def test_two_rank_zero2_loss_falls_and_ranks_agree(run_a):
    s0, s1 = summaries(run_a, 2)
    assert s0["steps"] == list(range(1, STEPS + 1))
    assert s0["train_loss"] == s1["train_loss"], "ranks report different losses"
    assert s0["params_checksum"] == s1["params_checksum"], "ranks hold different weights"
    losses = s0["train_loss"]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"loss did not fall: {losses}"
    final = json.loads((run_a / "final_metrics.json").read_text())
    assert (
        final["val/num_samples"] == 4 and final["test/num_samples"] == 4
    )  # every val clip once over both ranks
    assert 0.0 <= final["val/top1"] <= 100.0
    assert (run_a / "checkpoints" / "latest").read_text() == f"global_step{STEPS}"
    assert (run_a / "config.yaml").exists() and json.loads((run_a / "ds_config.json").read_text())[
        "train_batch_size"
    ] == 4


def test_mlflow_run_has_params_metrics_artifacts(run_a):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_a}/mlflow.db")
    exp = client.get_experiment_by_name("test_train")
    (run,) = client.search_runs([exp.experiment_id])
    p = run.data.params
    assert p["optim.lr"] == "0.003" and p["token_dropout.drop_ratio"] == "0.5" and p["world_size"] == "2"
    assert p["ds.zero_optimization.stage"] == "2" and p["ds.train_batch_size"] == "4"
    assert "version.torch" in p and "version.deepspeed" in p and "git_commit" in p
    assert p["data.backend"] == "auto" and p["data.backend_resolved"] in ("torchcodec", "decord", "pyav")
    for key in (
        "train/loss",
        "train/cls_loss",
        "train/mae_loss",
        "train/lr",
        "train/clips_per_s",
        "train/tokens_per_s",
        "train/step_time_s",
        "train/peak_mem_mb",
    ):
        hist = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in hist] == list(range(1, STEPS + 1)), key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/top1")] == [4, STEPS]
    assert {"test/top1", "test/top5"} <= set(run.data.metrics)
    # The planner's prediction beside the measured peak of the first step (same config, per rank).
    (pred,) = client.get_metric_history(run.info.run_id, "memory/predicted_peak_mb")
    (meas,) = client.get_metric_history(run.info.run_id, "memory/measured_peak_mb")
    assert pred.step == meas.step == 0 and abs(pred.value / meas.value - 1) < 0.15
    # Epoch ends (2 steps an epoch on 2 ranks; noticed when the next batch is asked for) and the end.
    failed = client.get_metric_history(run.info.run_id, "data/failed_videos")
    assert [(m.step, m.value) for m in failed] == [(2, 0.0), (4, 0.0), (6, 0.0), (8, 0.0)]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "ds_config.json", "final_metrics.json"} <= arts
    assert "data_failures" not in arts  # nothing failed: no failure log
    assert run.info.status == "FINISHED"


def test_single_process_python_zero3(demo_data, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(
        tiny_config(
            demo_data,
            out,
            train={"max_steps": 3, "eval_every": 0},
            checkpoint={"every_steps": 0},
            data={"test_split": None},
        ),
        tmp_path / "cfg.yaml",
    )
    proc = launch(
        [
            "scripts/train.py",
            "--ds_config",
            "ds_configs/zero3.json",
            "--config",
            str(cfg),
            "--set",
            "model.activation_checkpointing=deepspeed",
        ],
        nprocs=1,
    )
    assert "ZeRO stage 3" in proc.stdout and "mlflow ui --host 127.0.0.1 --backend-store-uri" in proc.stdout
    assert "[turbo_ds] data: no video failed to decode" in proc.stdout
    assert proc.stdout.count("[turbo_ds] data: decoder backend ") == 1  # auto's choice, logged once
    (s,) = summaries(out, 1)
    assert s["steps"] == [1, 2, 3] and all(math.isfinite(v) for v in s["train_loss"])
    assert (out / "checkpoints" / "latest").read_text() == "global_step3"


def test_nonfinite_skipped_then_stop_and_final_dense_phase(demo_data, tmp_path, monkeypatch):
    """In-process main([...]): a few NaN losses are skipped and counted, too many in a row stop the run;
    the final dense phase drops no tokens."""
    import torch

    from turbo_ds.loop import train_cli
    from turbo_ds.loop.trainer import NonFiniteLossError
    from turbo_ds.tasks.classification import ClassificationTask

    for k in LAUNCH_ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    calls = {"n": 0}
    real_forward = ClassificationTask.forward

    ratios = []

    def flaky(self, batch):
        out = real_forward(self, batch)
        if self.training:
            ratios.append(self.model.encoder.drop_ratio)
            calls["n"] += 1
            if calls["n"] in bad_calls:
                out.loss = out.loss * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(ClassificationTask, "forward", flaky)
    bad_calls = {2, 3}
    cfg = write_config(
        tiny_config(
            demo_data,
            tmp_path / "a",
            train={"max_steps": 3, "eval_every": 0, "max_nonfinite_in_row": 3},
            checkpoint={"every_steps": 0, "save_final": False},
            data={"test_split": None},
            tracking={"enabled": False},
        ),
        tmp_path / "a.yaml",
    )
    final = train_cli.main(
        [
            "--config",
            str(cfg),
            "--ds_config",
            "ds_configs/zero0.json",
            "--set",
            "token_dropout.final_dense_steps=1",
        ]
    )
    assert final["train/nonfinite_total"] == 2 and final["step"] == 3 and math.isfinite(final["train/loss"])
    # 5 training forwards (2 skipped); the last step (final dense phase) runs at drop ratio 0
    assert ratios == [0.5, 0.5, 0.5, 0.5, 0.0]

    calls["n"] = 0
    bad_calls = set(range(2, 100))
    cfg = write_config(
        tiny_config(
            demo_data,
            tmp_path / "b",
            train={"max_steps": 3, "eval_every": 0, "max_nonfinite_in_row": 3},
            checkpoint={"every_steps": 0, "save_final": False},
            data={"test_split": None},
            tracking={"enabled": False},
        ),
        tmp_path / "b.yaml",
    )
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite losses in a row .*max_nonfinite_in_row = 3"):
        train_cli.main(["--config", str(cfg), "--ds_config", "ds_configs/zero0.json"])


def test_bad_config_fails_before_launching(tmp_path):
    from turbo_ds.config import ConfigError
    from turbo_ds.loop import train_cli

    cfg = write_config({"optim": {"lr": 1e-3, "micro_batch": 4}}, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="'optim.micro_batch'"):
        train_cli.main(["--config", str(cfg), "--ds_config", "ds_configs/zero2.json"])


def test_broken_videos_reported_once_per_epoch_and_at_the_end(demo_data, tmp_path):
    """One cut training video and one cut validation video, two workers, two epochs: each is decoded
    once, FFmpeg stays quiet, rank 0 prints the running count at the epoch end and the total at the
    end, and MLflow gets data/failed_videos and the merged failure log."""
    from mlflow.tracking import MlflowClient

    data = tmp_path / "data"
    shutil.copytree(demo_data / "videos" / "actions", data / "videos" / "actions")
    shutil.copy(demo_data / "actions.parquet", data / "actions.parquet")
    cut = [sorted((data / "videos" / "actions" / s).glob("*.mp4"))[0] for s in ("train", "val")]
    for path in cut:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])  # moov atom lost
    out = tmp_path / "out"
    cfg = tiny_config(
        data,
        out,
        token_dropout={"drop_ratio": 0.0},
        pmae={"enabled": False},
        data={"num_workers": 2, "test_split": None},
        train={"max_steps": 8, "eval_every": 0, "log_every": 4},  # 4 steps an epoch
        checkpoint={"every_steps": 0, "save_final": False},
        tracking={"memory_plan": False},
    )
    cfg_path = write_config(cfg, tmp_path / "cfg.yaml")
    proc = launch(["scripts/train.py", "--ds_config", "ds_configs/zero0.json", "--config", str(cfg_path)], 1)
    details = f"details: {out / 'data_failures'}/"
    lines = [x for x in proc.stdout.splitlines() if x.startswith("[turbo_ds] data:") and "decode" in x]
    assert lines[0].startswith("[turbo_ds] data: decoder backend ")  # the choice, logged once
    assert lines[1:] == [
        f"[turbo_ds] data: 1 video failed to decode so far (1 occurrence, all ranks); {details}",
        f"[turbo_ds] data: 2 videos failed to decode (3 occurrences, all ranks); {details}",
    ]
    for noise in ("moov atom", "partial file", "ERROR opening", "replacing sample"):
        assert noise not in proc.stderr + proc.stdout, noise
    merged = [
        json.loads(x) for x in (out / "data_failures" / "decode_failures.jsonl").read_text().splitlines()
    ]
    tried = sorted(e["path"] for e in merged if not e["skipped"])
    assert tried == sorted(map(str, cut))  # each decoded once: epoch 2 skipped the training one
    assert all("moov atom not found" in e["log"] for e in merged if not e["skipped"])

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test_train").experiment_id])
    hist = client.get_metric_history(run.info.run_id, "data/failed_videos")
    assert [(m.step, m.value) for m in hist] == [(4, 1.0), (8, 2.0)]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "data_failures")}
    assert arts == {"data_failures/decode_failures.jsonl"}
    assert json.loads((out / "final_metrics.json").read_text())["data/failed_videos"] == 2
