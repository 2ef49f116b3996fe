"""Video-text end to end on the tiny demo: a 2-rank ZeRO-2 run (MIL-NCE + Partial-MAE, retrieval and
HTM-Align evaluation in chunks of seconds during and after training), exact resume, and scripts/eval.py
on its checkpoint (one rank: the same alignment metrics)."""

from __future__ import annotations

import json
import math

import pytest
from helpers import (
    launch,
    resume_copy,
    summaries,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow  # every test here launches training processes

STEPS = 4


def vt_config(data_dir, out_dir) -> dict:
    """test_train's tiny run, as a video-text task on the demo's narrated videos."""
    return tiny_config(
        data_dir,
        out_dir,
        token_dropout={"drop_ratio": 0.75},
        data={"index": str(data_dir / "vlp.parquet"), "test_split": None},
        task={
            "name": "video_text",
            "text_model": "turbo-tiny",
            "context_length": 16,
            "text_mode": "last_n",
            "loss": "milnce",
            "num_captions": 2,
            "samples_per_video": 2,
            "jitter_s": 0.3,
            "align_index": str(data_dir / "vlp_align.parquet"),
            # one second per item: a video's chunks spread over both ranks (eval.py: over one)
            "align_chunk_seconds": 1,
        },
        train={"max_steps": STEPS, "eval_every": 2},
        checkpoint={"every_steps": 2},
        tracking={"experiment": "test_video_text"},
    )


@pytest.fixture(scope="module")
def vt_run(demo_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("vt_run")
    out = work / "out"
    cfg = write_config(vt_config(demo_data, out), work / "cfg.yaml")
    proc = launch(
        ["scripts/train.py", "--ds_config", "ds_configs/zero2.json", "--config", str(cfg)], nprocs=2
    )
    return out, proc.stdout


def test_video_text_run_trains_and_evaluates(vt_run):
    out, stdout = vt_run
    s0, s1 = summaries(out, 2)
    assert s0["steps"] == list(range(1, STEPS + 1)) and s0["train_loss"] == s1["train_loss"]
    assert s0["params_checksum"] == s1["params_checksum"]
    assert all(math.isfinite(v) for v in s0["train_loss"])
    final = json.loads((out / "final_metrics.json").read_text())
    for key in ("train/nce_loss", "train/mae_loss", "train/temperature", "train/v2t_acc"):
        assert key in final, key
    # retrieval: every val caption of the tiny demo exactly once over both ranks
    assert final["val/num_samples"] == 5 and 0.0 <= final["val/t2v_r1"] <= 100.0
    assert final["val/t2v_medr"] >= 1.0 and "val/v2t_r10" in final
    assert final["test/align_num_videos"] == 2 and 0.0 <= final["test/align_roc_auc"] <= 1.0
    assert "retrieval on 5 captioned clips" in stdout and "alignment (HTM-Align protocol)" in stdout
    evals = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, STEPS] and all("train/time_s" in e for e in evals)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test_video_text").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/align_r1")] == [2, STEPS]
    assert run.data.params["task.text_mode"] == "last_n"


def test_video_text_resume_is_exact(vt_run, tmp_path):
    run_a, _ = vt_run
    out = tmp_path / "out"
    resume_copy(run_a, "global_step2", out, tmp_path / "cfg.yaml", tracking={"enabled": False})
    a, b = summaries(run_a, 2)[0], summaries(out, 2)[0]
    assert b["steps"] == list(range(3, STEPS + 1))
    assert b["train_loss"] == a["train_loss"][2:], "resumed losses differ from the uninterrupted run"
    assert b["params_checksum"] == a["params_checksum"]


def test_eval_script_on_a_video_text_checkpoint(vt_run, tmp_path):
    """Both splits in one eval.py call (the checkpoint consolidated once), each split's metrics in its
    own file and every one in one MLflow run."""
    from mlflow.tracking import MlflowClient

    run_a, _ = vt_run
    final = json.loads((run_a / "final_metrics.json").read_text())
    proc = launch(
        ["scripts/eval.py", "--checkpoint", str(run_a / "checkpoints"), "--split", "test", "val"]
        + ["--output_dir", str(tmp_path), "--set", "tracking.experiment=vt_eval"],
        nprocs=1,
    )
    logged = {}
    for split, keys in (("test", ("align_r1", "align_roc_auc")), ("val", ("t2v_r1", "v2t_r5", "t2v_medr"))):
        got = json.loads((tmp_path / f"eval_{split}_metrics.json").read_text())
        assert all(k.startswith(f"eval_{split}/") for k in got), got
        for k in keys:
            assert got[f"eval_{split}/{k}"] == pytest.approx(final[f"{split}/{k}"], abs=1e-6), (split, k)
        logged.update(got)
        assert f"on split '{split}'" in proc.stdout
    assert "R@1" in proc.stdout and "alignment" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("vt_eval").experiment_id])
    assert run.data.params["eval.split"] == "test,val" and run.info.run_name == "eval-checkpoints-test+val"
    assert run.data.metrics == pytest.approx(logged)


def test_export_then_eval_weights_of_a_video_text_run(vt_run, tmp_path):
    run_a, _ = vt_run
    final = json.loads((run_a / "final_metrics.json").read_text())
    weights = tmp_path / "vt_fp32.safetensors"
    launch(["scripts/export.py", "--checkpoint", str(run_a / "checkpoints"), "--out", str(weights)], nprocs=1)
    launch(
        [
            "scripts/eval.py",
            "--weights",
            str(weights),
            "--split",
            "test",
            "--output_dir",
            str(tmp_path / "ev"),
        ]
        + ["--set", "tracking.enabled=false"],
        nprocs=1,
    )
    got = json.loads((tmp_path / "ev" / "eval_test_metrics.json").read_text())
    assert got["eval_test/align_r1"] == pytest.approx(final["test/align_r1"], abs=1e-6)
    assert got["eval_test/align_roc_auc"] == pytest.approx(final["test/align_roc_auc"], abs=1e-6)
