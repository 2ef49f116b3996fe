"""MLflow tracking on rank 0; every other rank gets a logger whose methods do nothing. This module owns
the names of the tags turbo_ds sets on its runs and the rule that picks a run's store.

The store (:func:`store_uri`) is the one configured (``tracking.tracking_uri``, a sweep's or compare's
``--tracking-uri``), else ``$MLFLOW_TRACKING_URI``, else an embedded sqlite file
``<output_dir>/mlflow.db`` (artifacts under ``<output_dir>/mlartifacts``). A run resumed from a
checkpoint passes the saved ``run_id`` and continues the same MLflow run.

``tracking.system_metrics`` starts MLflow's ``SystemMetricsMonitor`` for the run: a thread in rank 0's
process that samples CPU, memory, disk, network (GPU with ``nvidia-ml-py``) and logs ``system/*``
metrics to this run's store (its tracking URI is passed explicitly: MLflow's default would be the
process-wide one, ``./mlruns``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_LEN = 500


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

# The tags turbo_ds sets on its runs; reports and sweeps find runs by them (tracking.tags holds the user's).
TASK_TAG = "turbo_ds.task"
"""The run's ``task.name``."""
HEADLINE_TAG = "turbo_ds.headline"
"""The full names (``{prefix}/{name}``) of the task's headline metrics, comma-separated."""
RESUMED_AT_STEP_TAG = "turbo_ds.resumed_at_step"
"""The step a resumed run went on from."""
STOPPED_BY_TAG = "turbo_ds.stopped_by"
"""The signal that stopped a preempted run (``SIGTERM``, ``SIGUSR1``)."""
STOPPED_AT_STEP_TAG = "turbo_ds.stopped_at_step"
"""The step at which a preempted run saved and stopped."""
SWEEP_ID_TAG = "turbo_ds.sweep_id"
"""12 hex digits of the sweep name's SHA-1: every run of one sweep has the same."""
SWEEP_NAME_TAG = "turbo_ds.sweep_name"
SWEEP_VARIED_TAG = "turbo_ds.sweep.varied"
"""The config keys the sweep varies, comma-separated; each one's value in :func:`sweep_value_tag`."""


def sweep_value_tag(key: str) -> str:
    """``turbo_ds.sweep.<key>``: the tag holding the value a sweep gave its varied config key ``key``."""
    return f"turbo_ds.sweep.{key}"


def configured_store(configured: str | None = None, env: Mapping[str, str] = os.environ) -> str | None:
    """The store a user chose: ``configured`` (``tracking.tracking_uri``, a ``--tracking-uri``), else
    ``$MLFLOW_TRACKING_URI``; None when neither is set (the caller's default store applies).

    The explicit setting wins, as in MLflow itself (a URI given to ``MlflowClient`` or
    ``mlflow.set_tracking_uri`` wins over the environment variable): a config names its store on
    purpose, and the resolved config saved with the run (``config.yaml``, the MLflow params) then
    says where the run was logged; the variable is the default of a shell or a cluster."""
    return configured or env.get(TRACKING_URI_ENV) or None


def local_store(folder: str | Path) -> str:
    """The store turbo_ds creates when none is chosen: ``sqlite:///<folder>/mlflow.db``."""
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def store_uri(folder: str | Path, configured: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    """The store a run (or a sweep) in ``folder`` logs to: :func:`configured_store`, else
    :func:`local_store` of ``folder``."""
    return configured_store(configured, env) or local_store(folder)


def is_local_store(uri: str) -> bool:
    """A store in local files (sqlite, file, a bare path), whose artifacts turbo_ds places itself:
    MLflow's default for a new experiment there is ``./mlruns`` of the current directory."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def local_artifacts(folder: str | Path) -> str:
    """``<folder>/mlartifacts`` as a URI: the artifact location of an experiment turbo_ds creates in a
    local store."""
    return (Path(folder).resolve() / "mlartifacts").as_uri()


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
    for name in (
        "torch",
        "deepspeed",
        "mlflow",
        "turbo_ds",
        "numpy",
        "pyarrow",
        "torchcodec",
        "decord",
        "av",
    ):
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
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, artifact_location)
        self._monitor = None
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
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):  # one store round trip per 100 tags, not one per tag
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def start_system_metrics(self, interval_s: float) -> None:
        """MLflow's sampler for this run, in a thread of this process, until :meth:`finish`."""
        import psutil
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # A resumed run continues the system/* steps where they stopped (not from 0 again).
        self._monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=self.tracking_uri
        )
        psutil.cpu_percent()  # the first sample measures from here, not from the process start
        self._monitor.start()

    def finish(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            # Before the run is terminated: the monitor stops by itself once it sees a finished run,
            # and finish() flushes what it has sampled (the interval in progress is not logged).
            self._monitor.finish()
            self._monitor = None
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
    system_metrics_interval_s: float | None = None,
) -> NullTracker:
    """An :class:`MlflowTracker` on rank 0 when enabled, else a :class:`NullTracker`; with
    ``system_metrics_interval_s``, sampling system metrics every that many seconds."""
    if not (enabled and is_rank_0):
        return NullTracker()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    uri = store_uri(output_dir, tracking_uri)
    # The store made in the run folder keeps its artifacts beside it; a chosen one, MLflow's default.
    artifact_location = None if configured_store(tracking_uri) else local_artifacts(output_dir)
    tracker = MlflowTracker(
        experiment,
        uri,
        run_name=run_name or output_dir.name,
        run_id=run_id,
        artifact_location=artifact_location,
    )
    if system_metrics_interval_s:
        tracker.start_system_metrics(system_metrics_interval_s)
    return tracker


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``, None = the store's default)
    if the store has none; a deleted one is an error (runs cannot be logged into it)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted in this store; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or choose another name"
        )
    return exp.experiment_id


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
