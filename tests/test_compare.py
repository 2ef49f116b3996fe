"""scripts/compare.py on MLflow runs made directly (no training), so every expected number is known:
speed-up and memory ratio from the logged values, the differing params only, the baseline choice,
plots, a self-contained HTML page, the CSV, failed and metric-less runs, merged stores, errors."""

from __future__ import annotations

import base64
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from turbo_ds.compare.main import compare
from turbo_ds.compare.runs import CompareError, Run, find_stores, load_runs
from turbo_ds.compare.summary import headline_names, summarize, time_axis
from turbo_ds.compare.table import build_table, choose_baseline

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000  # ms: start times fixed, so "first started" is known
CLIPS_PER_STEP = 8


def _params(name: str, drop: float) -> list[Param]:
    values = {
        "token_dropout.drop_ratio": drop,
        "task.name": "classification",
        "model.name": "vit_debug",
        "optim.lr": 0.001,
        "train.log_every": 10,
        "git_commit": "abc123",
        "output_dir": f"runs/{name}",  # differs in every run: bookkeeping, not a differing param
        "tracking.run_name": name,
        "tracking.experiment": "sweep",
    }
    return [Param(k, str(v)) for k, v in values.items()]


def log_run(
    client,
    exp_id,
    name,
    drop,
    step_time=None,
    peak=None,
    top1=None,
    steps=(10, 20),
    status="FINISHED",
    start=0,
    tags=None,
):
    """A run as the trainer logs it: train windows at ``steps``, the final eval at the last, then the end."""
    run_id = client.create_run(exp_id, start_time=T0 + start, run_name=name, tags=tags or {}).info.run_id
    client.log_batch(run_id, params=_params(name, drop))
    metrics = []
    if step_time is not None:
        metrics.append(Metric("memory/measured_peak_mb", peak * 0.8, T0, 0))
        for i, step in enumerate(steps):
            ts = T0 + start + 1000 * step
            metrics += [
                Metric("train/loss", 2.0 - 0.05 * i, ts, step),
                Metric("train/step_time_s", step_time, ts, step),
                Metric("train/clips_per_s", CLIPS_PER_STEP / step_time, ts, step),
                Metric("train/tokens_per_s", 1000.0 / step_time, ts, step),
                Metric("train/peak_mem_mb", peak * (1.0 if step == steps[-1] else 0.9), ts, step),
                Metric("train/data_wait_frac", 0.4 if i == 0 else 0.1 * i, ts, step),  # warm-up first
            ]
    if top1 is not None:
        ts, last = T0 + start + 1000 * steps[-1] + 500, steps[-1]
        metrics += [
            Metric("val/top1", top1, ts, last),
            Metric("test/top1", top1 - 2, ts, last),
            Metric("val/num_samples", 64.0, ts, last),
            Metric("train/time_s", step_time * last, ts, last),
        ]
    if status == "FINISHED" and step_time is not None:
        metrics.append(
            Metric("train/avg_clips_per_s", CLIPS_PER_STEP / step_time, T0 + start + 99_000, steps[-1])
        )
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """runs/sweep/mlflow.db: drop 0, 0.5 (FINISHED), 0.75 (FAILED after one window, no eval), 0.9 (RUNNING,
    no metrics: died hard); runs/extra/mlflow.db: one more drop-0 run of the sweep and another experiment."""
    root = tmp_path_factory.mktemp("compare")
    template = root / "template.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # the schema, made once (seconds)
    paths = {"sweep": root / "runs" / "sweep" / "mlflow.db", "extra": root / "runs" / "extra" / "mlflow.db"}
    for p in paths.values():
        p.parent.mkdir(parents=True)
        shutil.copy(template, p)
    art = (root / "artifacts").as_uri()
    c = MlflowClient(f"sqlite:///{paths['sweep']}")
    exp = c.create_experiment("sweep", artifact_location=art)
    log_run(c, exp, "drop0", 0.0, 0.5, 2000.0, 50.0, tags={"turbo_ds.headline": "val/top1,test/top1"})
    log_run(c, exp, "drop50", 0.5, 0.25, 1000.0, 46.0, start=1000)
    log_run(c, exp, "drop75", 0.75, 0.125, 500.0, steps=(10,), status="FAILED", start=2000)
    log_run(c, exp, "drop90", 0.9, status="RUNNING", start=3000)
    c = MlflowClient(f"sqlite:///{paths['extra']}")
    exp = c.create_experiment("sweep", artifact_location=art)
    log_run(c, exp, "drop0_again", 0.0, 0.5, 2100.0, 51.0, start=10_000)
    c.create_experiment("other", artifact_location=art)
    return {"root": root, **paths}


def uri(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def sweep(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare_out")
    return compare(out, experiments=["sweep"], tracking_uris=[uri(stores["sweep"])])


def rows_by_name(table) -> dict[str, dict]:
    return {row["run"]: row for row in table.rows}


@pytest.mark.slow
def test_table_values_against_the_drop0_baseline(sweep):
    table = sweep.table
    rows = rows_by_name(table)
    assert list(rows) == ["drop0", "drop50", "drop75", "drop90"]  # by start time
    assert table.baseline.run.name == "drop0" and rows["drop0"]["baseline"]
    # speed-up = clips/s / baseline's: 16 -> 32 (avg_clips_per_s), 64 (the FAILED run's window mean)
    assert [rows[n]["speedup"] for n in rows] == [1.0, 2.0, 4.0, None]
    # memory ratio = baseline's max train/peak_mem_mb / the run's
    assert [rows[n]["memory_ratio"] for n in rows] == [1.0, 2.0, 4.0, None]
    # training time = sum of step_time_s x window steps: 0.5 x 10 + 0.5 x 10
    assert [rows[n]["train_time_s"] for n in rows] == [10.0, 5.0, 1.25, None]
    assert rows["drop50"]["tokens_per_s"] == 4000.0 and rows["drop50"]["peak_mem_mb"] == 1000.0
    # data wait: the windows' mean, the first (warm-up) one left out unless it is the only one
    assert [rows[n]["data_wait_pct"] for n in rows] == [10.0, 10.0, 40.0, None]
    # headline: drop0's tag first (val/top1 is the primary metric), the task's defaults for the others
    assert table.primary == "val/top1"
    assert rows["drop50"]["val/top1"] == 46.0 and rows["drop50"]["test/top1"] == 44.0
    assert rows["drop50"]["delta val/top1"] == -4.0 and rows["drop75"]["delta val/top1"] is None
    # only the param that differs: output_dir, run_name differ too but are bookkeeping
    keys = [c.key for c in table.columns]
    assert "token_dropout.drop_ratio" in keys
    assert not {"optim.lr", "git_commit", "output_dir", "tracking.run_name", "val/num_samples"} & set(keys)
    assert [rows[n]["token_dropout.drop_ratio"] for n in rows] == ["0.0", "0.5", "0.75", "0.9"]


def test_printed_table_marks_failed_and_empty_runs(sweep):
    lines = sweep.text.splitlines()
    header = lines[0].split()
    assert header[:4] == ["run", "id", "status", "base"] and "token_dropout.drop_ratio" in header
    assert "speed-up (x)" in lines[0] and "peak mem (MiB)" in lines[0] and "optim.lr" not in lines[0]
    by_run = {line.split()[0]: line for line in lines[2:6]}
    assert "FAILED" in by_run["drop75"] and "4.00" in by_run["drop75"]
    assert "RUNNING" in by_run["drop90"] and by_run["drop90"].count("—") >= 6
    assert any("baseline: drop0" in line for line in lines)
    assert any(line.startswith("drop90 (") and "no metrics logged (status RUNNING)" in line for line in lines)


def test_plots_are_pngs(sweep):
    drawn = {p.name: p for p in sweep.plots if p.path is not None}
    assert set(drawn) == {"loss_vs_step", "loss_vs_time", "eval_vs_time", "throughput_memory", "drop_ratio"}
    for p in drawn.values():
        assert p.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the run without metrics is left out of every plot, and said so
    assert any(s.startswith("drop90") for s in drawn["loss_vs_step"].skipped)
    assert any(s.startswith("drop75") for s in drawn["eval_vs_time"].skipped)


def test_html_embeds_everything(sweep):
    report = sweep.paths[0]
    assert report.name == "report.html"
    page = report.read_text()
    assert "turbo_ds compare: sweep" in page and "Definitions" in page and "speed-up" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:4] == b"\x89PNG"
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "<link" not in page and "<script" not in page and "url(" not in page and "http" not in page
    assert re.search(r'<tr class="failed"><td>drop75</td>', page) and re.search(
        r'<tr class="failed"><td>drop90</td>', page
    )
    assert '<tr class="baseline"><td>drop0</td>' in page


def test_csv_full_precision(sweep):
    path = next(p for p in sweep.paths if p.name == "compare.csv")
    with open(path, newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["drop0", "drop50", "drop75", "drop90"]
    r = rows["drop75"]
    assert (r["status"], r["speedup"], r["memory_ratio"], r["train_time_s"]) == (
        "FAILED",
        "4.0",
        "4.0",
        "1.25",
    )
    assert (
        r["val/top1"] == ""
        and rows["drop0"]["baseline"] == "true"
        and rows["drop50"]["delta val/top1"] == "-4.0"
    )
    assert len(rows["drop0"]["run_id"]) == 32 and rows["drop0"]["tracking_uri"].startswith("sqlite:///")
    assert rows["drop90"]["notes"] == "no metrics logged"


def test_baseline_by_name_and_selection(stores):
    runs = load_runs([uri(stores["sweep"])], ["sweep"], runs=["drop0", "drop50"])
    assert [r.name for r in runs] == ["drop0", "drop50"]
    summaries = [summarize(r) for r in runs]
    base, note = choose_baseline(summaries, "drop50")
    rows = rows_by_name(build_table(summaries, base, note))
    assert (rows["drop0"]["speedup"], rows["drop0"]["memory_ratio"]) == (0.5, 0.5)
    assert "chosen with --baseline" in note
    with pytest.raises(CompareError, match="--baseline 'nope': no selected run"):
        choose_baseline(summaries, "nope")
    with pytest.raises(CompareError, match="--runs 'nope': no run with that id or name in experiment"):
        load_runs([uri(stores["sweep"])], ["sweep"], runs=["nope"])


def test_no_baseline_without_a_dense_run(stores):
    summaries = [
        summarize(r) for r in load_runs([uri(stores["sweep"])], ["sweep"], runs=["drop50", "drop75"])
    ]
    base, note = choose_baseline(summaries)
    table = build_table(summaries, base, note)
    assert base is None and note.startswith("no baseline")
    assert "speedup" not in [c.key for c in table.columns]


def test_two_stores_merged(stores):
    runs = load_runs(
        [uri(stores["sweep"]), uri(stores["extra"]), uri(stores["sweep"])], ["sweep"]
    )  # a store given twice counts once
    assert [r.name for r in runs] == ["drop0", "drop50", "drop75", "drop90", "drop0_again"]
    assert runs[-1].tracking_uri == uri(stores["extra"])
    base, note = choose_baseline([summarize(r) for r in runs])
    assert base.run.name == "drop0" and "2 runs have drop ratio 0" in note
    # --runs-dir finds both stores
    assert find_stores(stores["root"] / "runs") == [
        uri(stores["extra"].resolve()),
        uri(stores["sweep"].resolve()),
    ]


def test_filter_and_errors(stores):
    sweep_uri = uri(stores["sweep"])
    runs = load_runs([sweep_uri], ["sweep"], filter_string="params.`token_dropout.drop_ratio` = '0.5'")
    assert [r.name for r in runs] == ["drop50"]
    with pytest.raises(CompareError, match="no runs match in experiment"):
        load_runs([sweep_uri], ["sweep"], filter_string="params.`token_dropout.drop_ratio` = '0.3'")
    with pytest.raises(
        CompareError, match=r"unknown experiment 'nope' in 2 store\(s\); they have: Default, other, sweep$"
    ):
        load_runs([sweep_uri, uri(stores["extra"])], ["nope"])
    with pytest.raises(CompareError, match="no MLflow store at"):
        load_runs([uri(stores["root"] / "typo.db")], ["sweep"])
    with pytest.raises(CompareError, match="--filter"):
        load_runs([sweep_uri], ["sweep"], filter_string="params.x ==== 1")


def test_history_dedupes_resumed_steps_and_time_axis():
    # steps 10, 20 logged, then resumed from step 15: 20 logged again (it wins), 30
    points = [(10, 0.5, 1), (20, 0.5, 2), (20, 1.0, 3), (30, 1.0, 4)]
    run = Run(
        "r" * 32,
        "r",
        "e",
        "u",
        "FINISHED",
        0,
        {"train.log_every": "10"},
        {},
        {"train/step_time_s": 1.0},
        fetch_history=lambda key: [Metric(key, v, ts, s) for s, v, ts in points],
    )
    axis = time_axis(run)
    assert (axis.steps, axis.seconds) == ([0, 10, 20, 30], [0.0, 5.0, 15.0, 25.0]) and axis.at(25) == 20.0
    # a run whose first logged step is 110 (started from a checkpoint): one window, not 110 steps
    run = Run(
        "s" * 32,
        "s",
        "e",
        "u",
        "FINISHED",
        0,
        {"train.log_every": "10"},
        {},
        {"train/step_time_s": 1.0},
        fetch_history=lambda key: [Metric(key, 2.0, 0, 110)],
    )
    assert time_axis(run).seconds == [0.0, 20.0]


def test_headline_defaults_per_task():
    def run(task, metrics, tags=None):
        return Run(
            "x" * 32,
            "x",
            "e",
            "u",
            "FINISHED",
            0,
            {"task.name": task},
            tags or {},
            dict.fromkeys(metrics, 1.0),
        )

    vt = [
        "val/t2v_r1",
        "val/t2v_r5",
        "val/v2t_r1",
        "align/align_r1",
        "align/align_roc_auc",
        "align/align_num_videos",
    ]
    assert headline_names(run("video_text", vt)) == [
        "val/t2v_r1",
        "val/v2t_r1",
        "align/align_r1",
        "align/align_roc_auc",
    ]
    assert headline_names(run("long_video", ["val_full/top1", "val_chunked/top1", "val_full/loss"])) == [
        "val_chunked/top1",
        "val_full/top1",
    ]
    assert headline_names(run("mystery", ["val/f1", "val/num_samples", "train/loss"])) == ["val/f1"]
    assert headline_names(
        run("classification", ["val/top1"], {"turbo_ds.headline": "test/top1, val/top1"})
    ) == [
        "test/top1",
        "val/top1",
    ]


@pytest.mark.slow
def test_cli_exit_codes_without_torch(stores, tmp_path):
    # A torch that cannot be imported: compare must run without it (a laptop with mlflow + matplotlib).
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('compare must not import torch')\n")
    env = {"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [
        sys.executable,
        "scripts/compare.py",
        "--tracking-uri",
        uri(stores["sweep"]),
        "--out",
        str(tmp_path / "o"),
    ]
    bad = subprocess.run(
        cmd + ["--experiment", "nope"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "turbo_ds: error: unknown experiment 'nope' in 1 store(s); they have: Default, sweep"
    ]
    ok = subprocess.run(
        cmd + ["--experiment", "sweep"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        ok.stdout.startswith("run ") and "wrote:" in ok.stdout and (tmp_path / "o" / "report.html").is_file()
    )


@pytest.mark.slow
def test_compare_on_a_real_tiny_sweep(tiny_sweep, tmp_path):
    """scripts/sweep.py's runs (tests/conftest.py): one row per drop ratio, the varied key the only
    differing param, speed-up and memory ratio computed from what the runs logged, val/top1 headline."""
    import json

    from turbo_ds.compare.main import compare

    result = compare(tmp_path / "report", runs_dirs=[tiny_sweep])
    table = result.table
    rows = sorted(table.rows, key=lambda r: float(r["token_dropout.drop_ratio"]))
    assert [r["token_dropout.drop_ratio"] for r in rows] == ["0.0", "0.75"]
    assert table.baseline.run.params["token_dropout.drop_ratio"] == "0.0"
    params = [c.key for c in table.columns if "." in c.key and c.kind == "text"]
    assert params == ["token_dropout.drop_ratio"], params
    assert table.primary == "val/top1"
    output_dir = {s.run.run_id: s.run.params["output_dir"] for s in table.summaries}
    for row in rows:
        final = json.loads((Path(output_dir[row["run_id"]]) / "final_metrics.json").read_text())
        assert row["val/top1"] == final["val/top1"]
        assert row["clips_per_s"] == final["train/avg_clips_per_s"]
        assert row["speedup"] == row["clips_per_s"] / rows[0]["clips_per_s"]
        assert 0.0 <= row["data_wait_pct"] <= 100.0
    assert {p.name for p in result.plots if p.path is not None} >= {
        "loss_vs_step",
        "eval_vs_time",
        "drop_ratio",
    }
