"""Tracking: MLflow on rank 0 only; the store: the configured one, else $MLFLOW_TRACKING_URI, else sqlite
under the output folder; resume."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from turbo_ds.tracking import NullTracker, configured_store, create_tracker, store_uri


def test_non_zero_rank_and_disabled_are_noops(tmp_path):
    assert type(create_tracker(True, False, tmp_path / "a", "exp")) is NullTracker
    assert type(create_tracker(False, True, tmp_path / "b", "exp")) is NullTracker
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_store_is_configured_else_env_else_sqlite_under_output_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert configured_store() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    assert store_uri(tmp_path) == f"sqlite:///{tmp_path}/other.db"
    assert store_uri(tmp_path, "file:///x") == "file:///x"  # an explicit store wins, as in MLflow
    assert configured_store("file:///x", env={}) == "file:///x" and configured_store(env={}) is None


def test_the_trainers_configured_store_wins_over_the_environment(tmp_path, monkeypatch):
    """What the trainer does with ``tracking.tracking_uri`` (passed to create_tracker as it is): the run
    goes there, not to ``$MLFLOW_TRACKING_URI``'s store, and the store's experiment keeps MLflow's
    artifact location (only the store made in the run folder gets ``<output_dir>/mlartifacts``)."""
    env_db, configured_db = tmp_path / "env.db", tmp_path / "configured.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env_db}")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the current directory
    t = create_tracker(True, True, tmp_path / "run", "exp", tracking_uri=f"sqlite:///{configured_db}")
    t.finish()
    assert t.tracking_uri == f"sqlite:///{configured_db}" and configured_db.exists() and not env_db.exists()
    exp = MlflowClient(t.tracking_uri).get_experiment_by_name("exp")
    assert "mlartifacts" not in exp.artifact_location
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    own = create_tracker(True, True, tmp_path / "own", "exp")
    own.finish()
    exp = MlflowClient(own.tracking_uri).get_experiment_by_name("exp")
    assert exp.artifact_location == (tmp_path / "own" / "mlartifacts").resolve().as_uri()


def test_run_params_metrics_artifacts_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    t = create_tracker(True, True, out, "exp", run_name="r1")
    assert (out / "mlflow.db").exists()
    t.log_params({"optim.lr": 0.001, "optim.betas": [0.9, 0.999]})
    t.log_metrics({"train/loss": 2.0}, step=1)
    (out / "config.yaml").write_text("seed: 0\n")
    t.log_artifact(out / "config.yaml")
    t.finish()
    t2 = create_tracker(True, True, out, "exp", run_id=t.run_id)
    assert t2.run_id == t.run_id
    t2.log_params({"optim.lr": 0.001, "extra": 1})
    t2.log_metrics({"train/loss": 1.0}, step=2)
    t2.finish()
    c = MlflowClient(t.tracking_uri)
    run = c.get_run(t.run_id)
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["optim.betas"] == "[0.9, 0.999]"
    assert [m.value for m in c.get_metric_history(t.run_id, "train/loss")] == [2.0, 1.0]
    assert [a.path for a in c.list_artifacts(t.run_id)] == ["config.yaml"]
    assert run.info.status == "FINISHED"
    assert t.ui_command() == f"mlflow ui --host 127.0.0.1 --backend-store-uri {t.tracking_uri}"
    # a run id the store does not know starts a new run instead of failing
    t3 = create_tracker(True, True, tmp_path / "elsewhere", "exp", run_id=t.run_id)
    assert t3.run_id != t.run_id


def test_headline_tag_names_the_final_evaluations_metrics():
    """Every evaluation prefix x the task's headline names; with the final metrics, only those present."""
    from turbo_ds.loop.evaluation import headline_metrics
    from turbo_ds.tasks.base import DataSpec, EvalSpec, MeanEvaluator

    specs = [
        EvalSpec("val", DataSpec(), MeanEvaluator, prefix="val"),
        EvalSpec("align", DataSpec(), MeanEvaluator, prefix="align", during_training=False),
        EvalSpec("val", DataSpec(), MeanEvaluator, prefix="val"),  # a second evaluation of val
    ]
    headline = ("t2v_r1", "align_r1")
    assert headline_metrics(specs, headline) == [
        "val/t2v_r1",
        "val/align_r1",
        "align/t2v_r1",
        "align/align_r1",
    ]
    final = {"val/t2v_r1": 10.0, "align/align_r1": 50.0, "val/loss": 1.0}
    assert headline_metrics(specs, headline, available=final) == ["val/t2v_r1", "align/align_r1"]


def test_tag_names_are_written_only_in_tracking():
    """Every tag name is a constant of turbo_ds.tracking, used where a tag is written and where it is
    read: no string constant elsewhere in the package spells one."""
    import ast

    from helpers import ROOT

    from turbo_ds import tracking

    names = {v for k, v in vars(tracking).items() if k.endswith("_TAG")}
    assert {"turbo_ds.task", "turbo_ds.headline", "turbo_ds.sweep_id"} <= names
    skip = {"tracking.py"}
    package = ROOT / "turbo_ds"
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if text in names or text.startswith(tracking.sweep_value_tag("")):
                found.append(f"{rel}:{node.lineno}: {text!r}")
    assert found == []
