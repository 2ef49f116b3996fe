"""MLflow tracking on rank 0; every other rank gets a logger whose methods do nothing.

The store is ``$MLFLOW_TRACKING_URI`` when set, else the config's ``tracking.tracking_uri``, else an
embedded sqlite file ``<output_dir>/mlflow.db`` (artifacts under ``<output_dir>/mlartifacts``). A run
resumed from a checkpoint passes the saved ``run_id`` and continues the same MLflow run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

MAX_PARAM_LEN = 500


def default_tracking_uri(output_dir: str | Path, configured: str | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if configured:
        return configured
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "deepspeed", "mlflow", "turbo_ds", "numpy", "pyarrow"):
        try:
            out[f"version.{name}"] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


class NullTracker:
    """What non-zero ranks (and runs with tracking disabled) get."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def ui_command(self) -> str:
        return ""


class MlflowTracker(NullTracker):
    """A started (or resumed) MLflow run; use through :func:`create_tracker`."""

    def __init__(
        self,
        experiment: str,
        tracking_uri: str,
        run_name: str | None = None,
        run_id: str | None = None,
        artifact_location: str | None = None,
    ):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location
            )
        else:
            self.experiment_id = exp.experiment_id
        run = None
        if run_id is not None:
            from mlflow.exceptions import MlflowException

            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                print(
                    f"[turbo_ds] MLflow run {run_id} is not in {tracking_uri}; starting a new run", flush=True
                )
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name)
            self.run_id = run.info.run_id
        self._mlflow = mlflow

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = []
        for k, v in params.items():
            sv = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            sv = sv[:MAX_PARAM_LEN]
            if k in existing:
                continue  # a resumed run keeps its params (MLflow params are immutable)
            items.append(Param(k, sv))
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def ui_command(self) -> str:
        return f"mlflow ui --host 127.0.0.1 --backend-store-uri {self.tracking_uri}"


def create_tracker(
    enabled: bool,
    is_rank_0: bool,
    output_dir: str | Path,
    experiment: str,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> NullTracker:
    """An :class:`MlflowTracker` on rank 0 when enabled, else a :class:`NullTracker`."""
    if not (enabled and is_rank_0):
        return NullTracker()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    uri = default_tracking_uri(output_dir, tracking_uri)
    artifact_location = None
    if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_TRACKING_URI") and not tracking_uri:
        artifact_location = (output_dir.resolve() / "mlartifacts").as_uri()
    return MlflowTracker(
        experiment,
        uri,
        run_name=run_name or output_dir.name,
        run_id=run_id,
        artifact_location=artifact_location,
    )


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2, default=str)
        tmp = f.name
    os.replace(tmp, path)
    return path


def append_jsonl(record: dict[str, Any], path: str | Path) -> Path:
    """Append one JSON line (a record per evaluation, per step...) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return path
