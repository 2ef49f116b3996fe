"""Runs from one or several MLflow stores, selected by experiment, run id or name, and MLflow filter.

A store is a tracking URI. Without ``--tracking-uri`` the store is ``$MLFLOW_TRACKING_URI``, else every
run folder's own ``mlflow.db`` under ``runs/`` (what the trainer writes when neither is set); the runs
of several stores are merged (a run id is unique across stores, so a run found twice counts once).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo_ds.tracking import configured_store

DEFAULT_RUNS_DIR = "runs"


class CompareError(ValueError):
    """A selection that names nothing: no store, an unknown experiment, no matching run."""


@dataclass
class Run:
    """One MLflow run: its info, params, tags, latest metric values, and histories on demand."""

    run_id: str
    name: str
    experiment: str
    tracking_uri: str
    status: str  # FINISHED, FAILED, KILLED (stopped by a signal), RUNNING (still going, or died hard)
    start_time: int  # ms since the epoch
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value per key (MLflow: highest step, then latest timestamp)
    fetch_history: Callable[[str], list[Any]] | None = field(default=None, repr=False, compare=False)
    _histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict, repr=False, compare=False)

    def history(self, key: str) -> list[tuple[int, float]]:
        """``key``'s values as ``(step, value)`` sorted by step, one per step: a resumed run logs some steps
        again, and the value logged last for a step wins (the one the run went on from)."""
        if key not in self._histories:
            points = self.fetch_history(key) if self.fetch_history is not None and key in self.metrics else []
            by_step: dict[int, float] = {}
            for m in sorted(points, key=lambda m: (m.step, m.timestamp)):
                by_step[int(m.step)] = float(m.value)
            self._histories[key] = sorted(by_step.items())
        return self._histories[key]


def find_stores(runs_dir: str | Path) -> list[str]:
    """``sqlite:///`` URIs of every ``mlflow.db`` under ``runs_dir`` (each run folder's default store)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise CompareError(f"--runs-dir {runs_dir}: not a folder")
    return [f"sqlite:///{p.resolve()}" for p in sorted(root.rglob("mlflow.db"))]


def resolve_stores(
    tracking_uris: Sequence[str] = (),
    runs_dirs: Sequence[str | Path] = (),
    env: Mapping[str, str] = os.environ,
) -> list[str]:
    """The stores to read: the given URIs and the stores found under the given folders; with neither,
    ``$MLFLOW_TRACKING_URI``, else the stores under ``runs/`` (the precedence of
    :func:`turbo_ds.tracking.configured_store`: what is given wins over the environment)."""
    uris = list(tracking_uris)
    for d in runs_dirs:
        found = find_stores(d)
        if not found:
            raise CompareError(f"--runs-dir {d}: no mlflow.db under it")
        uris += found
    if not tracking_uris and not runs_dirs:
        if chosen := configured_store(env=env):
            uris = [chosen]
        elif Path(DEFAULT_RUNS_DIR).is_dir():
            uris = find_stores(DEFAULT_RUNS_DIR)
        if not uris:
            raise CompareError(
                f"no MLflow store: MLFLOW_TRACKING_URI is not set and {DEFAULT_RUNS_DIR}/ has no mlflow.db; "
                "pass --tracking-uri URI or --runs-dir DIR"
            )
    return list(dict.fromkeys(uris))


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _client(uri: str) -> Any:
    # MLflow creates an empty database for a sqlite path that does not exist: a typo would then read
    # as "unknown experiment" instead of naming the missing file.
    path = _sqlite_path(uri)
    if path is not None and not path.is_file():
        raise CompareError(f"no MLflow store at {path} (tracking URI {uri})")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _pages(search: Callable[..., Any]) -> Iterable[Any]:
    token = None
    while True:
        page = search(page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _store_runs(uri: str, experiments: Sequence[str], filter_string: str, known: set[str]) -> list[Run]:
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        exps = list(_pages(functools.partial(client.search_experiments, max_results=1000)))
    except MlflowException as e:
        raise CompareError(f"cannot read the MLflow store {uri}: {_first_line(e)}") from e
    known.update(e.name for e in exps)
    names = {e.experiment_id: e.name for e in exps if not experiments or e.name in experiments}
    if not names:
        return []
    search = functools.partial(
        client.search_runs, list(names), filter_string=filter_string or "", max_results=1000
    )
    try:
        found = list(_pages(search))
    except MlflowException as e:
        raise CompareError(f"--filter {filter_string!r}: {_first_line(e)}") from e
    return [
        Run(
            run_id=r.info.run_id,
            name=r.info.run_name or r.info.run_id[:8],
            experiment=names[r.info.experiment_id],
            tracking_uri=uri,
            status=r.info.status,
            start_time=int(r.info.start_time or 0),
            params=dict(r.data.params),
            tags=dict(r.data.tags),
            metrics=dict(r.data.metrics),
            fetch_history=functools.partial(client.get_metric_history, r.info.run_id),
        )
        for r in found
    ]


def find_run(runs: Sequence[Run], key: str) -> list[Run]:
    """The runs ``key`` names: its exact run id, else its run name (several runs may share one), else
    a run id prefix of 6 characters or more (the table shows the first 8)."""
    if exact := [r for r in runs if r.run_id == key]:
        return exact
    if named := [r for r in runs if r.name == key]:
        return named
    return [r for r in runs if r.run_id.startswith(key)] if len(key) >= 6 else []


def load_runs(
    stores: Sequence[str],
    experiments: Sequence[str] = (),
    runs: Sequence[str] = (),
    filter_string: str = "",
) -> list[Run]:
    """The selected runs of every store, oldest first. ``experiments``: names (none = all of them);
    ``runs``: ids or names to keep (none = all); ``filter_string``: an MLflow search filter."""
    known: set[str] = set()
    found: dict[str, Run] = {}
    for uri in stores:
        for run in _store_runs(uri, experiments, filter_string, known):
            found.setdefault(run.run_id, run)
    missing = [e for e in experiments if e not in known]
    if missing:
        have = ", ".join(sorted(known)) or "none"
        raise CompareError(
            f"unknown experiment {', '.join(map(repr, missing))} in {len(stores)} store(s); they have: {have}"
        )
    where = f"experiment(s) {', '.join(map(repr, experiments))}" if experiments else f"{len(stores)} store(s)"
    selected = list(found.values())
    if runs:
        keep: dict[str, Run] = {}
        for key in runs:
            matches = find_run(selected, key)
            if not matches:
                raise CompareError(f"--runs {key!r}: no run with that id or name in {where}")
            keep.update((r.run_id, r) for r in matches)
        selected = list(keep.values())
    if not selected:
        raise CompareError(
            f"no runs match in {where}" + (f" with --filter {filter_string!r}" if filter_string else "")
        )
    return sorted(selected, key=lambda r: (r.start_time, r.run_id))
