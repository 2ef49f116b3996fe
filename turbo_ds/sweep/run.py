"""Running a sweep: every combination in turn, skipping finished ones, recorded in ``sweep.json``.

A combination is finished when its run folder holds ``final_metrics.json``; any other is (re)run with
``--resume latest``, which continues from its checkpoint (and the same MLflow run) if it saved one.
A failed run is recorded and the sweep goes on (``stop_on_failure``: it stops); a run that exits 75
(preempted, checkpoint saved) or a stop signal to the sweep ends the sweep with 75 (130 for Ctrl-C),
so that a requeued sweep job resumes where it stopped.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from collections.abc import Callable
from typing import Any

from turbo_ds.cli import EXIT_PREEMPTED
from turbo_ds.measure.launch import TRAIN_SCRIPT
from turbo_ds.sweep.launch import Child, SweepSignals
from turbo_ds.sweep.spec import Combination, Sweep
from turbo_ds.tracking import SWEEP_ID_TAG, get_or_create_experiment, write_json

SWEEP_FILE = "sweep.json"
# (sweep, combination, signals) -> the run's exit status; the default launches its command.
Runner = Callable[[Sweep, Combination, SweepSignals], int]


def launch(sweep: Sweep, combo: Combination, signals: SweepSignals) -> int:
    from turbo_ds.engine.distributed import free_port

    # The run's store is its tracking.tracking_uri (the sweep's), which wins over $MLFLOW_TRACKING_URI.
    child = Child(sweep.command(combo, free_port()), TRAIN_SCRIPT)
    signals.attach(child)
    try:
        return child.wait()
    finally:
        signals.attach(None)


def exit_text(code: int | None) -> str:
    if code is None:
        return ""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


class Record:
    """The sweep's state in ``<folder>/sweep.json``, rewritten at every change (a sweep killed with -9
    leaves the combination it was running as ``running``)."""

    def __init__(self, sweep: Sweep, experiment_id: str | None):
        self.sweep = sweep
        self.path = sweep.folder / SWEEP_FILE
        self.previous = json.loads(self.path.read_text()) if self.path.exists() else None
        self.experiment_id = experiment_id
        self.entries: list[dict[str, Any]] = [
            {
                "index": c.index,
                "slug": c.slug,
                "overrides": c.overrides,
                "values": c.values,
                "run_dir": str(c.run_dir),
                "status": "finished" if c.finished else "pending",
                "exit_code": None,
                "wall_s": None,
                "resumed_from": None,
                "mlflow_run_id": None,
            }
            for c in sweep.combos
        ]

    def base(self) -> dict[str, Any]:
        s = self.sweep
        return {"config": str(s.config), "ds_config": str(s.ds_config), "num_gpus": s.num_gpus, "set": s.sets}

    def base_changed(self) -> bool:
        return self.previous is not None and self.previous.get("base") != self.base()

    def update(self, combo: Combination, **fields: Any) -> None:
        self.entries[combo.index - 1].update(fields)
        self.write()

    def write(self) -> None:
        s = self.sweep
        write_json(
            {
                "sweep_id": s.sweep_id,
                "sweep_name": s.name,
                "tracking_uri": s.tracking_uri,
                "experiment": s.experiment,
                "experiment_id": self.experiment_id,
                "artifact_location": s.artifact_location,
                "grid": s.grid,
                "base": self.base(),
                "combinations": self.entries,
                "compare_command": s.compare_command(),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            self.path,
        )

    def add_run_ids(self) -> None:
        """Each combination's MLflow run id, found by the sweep's tag and the run name (best effort:
        sweep.json is complete without them)."""
        if self.experiment_id is None:
            return
        try:
            from mlflow.tracking import MlflowClient

            runs = MlflowClient(self.sweep.tracking_uri).search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{SWEEP_ID_TAG}` = '{self.sweep.sweep_id}'",
                order_by=["attributes.start_time ASC"],
            )
        except Exception as e:  # noqa: BLE001 - the runs are done; a lookup must not fail the sweep
            print(f"[sweep] could not look up the MLflow run ids ({type(e).__name__}: {e})", flush=True)
            return
        by_name = {r.info.run_name: r.info.run_id for r in runs}  # a later run of a name wins
        for e in self.entries:
            e["mlflow_run_id"] = by_name.get(e["slug"], e["mlflow_run_id"])
        self.write()


def status_text(entry: dict[str, Any]) -> str:
    status = entry["status"]
    if status in ("failed", "preempted", "interrupted") and entry["exit_code"] is not None:
        status += f" ({exit_text(entry['exit_code'])})"
    if entry["resumed_from"] and status == "finished":
        status += f" (resumed from {entry['resumed_from']})"
    return status


def summary(sweep: Sweep, record: Record) -> str:
    entries = record.entries
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    width = max(len("combination"), *(len(e["slug"]) for e in entries))
    swidth = max(len("status"), *(len(status_text(e)) for e in entries))
    lines = [
        f"[sweep] {sweep.name} (sweep id {sweep.sweep_id}): "
        + ", ".join(f"{n} {status}" for status, n in counts.items()),
        f"  {'#':>3}  {'combination':<{width}}  {'status':<{swidth}}  wall",
    ]
    for e in entries:
        wall = f"{e['wall_s']:.1f} s" if e["wall_s"] is not None else "-"
        lines.append(f"  {e['index']:>3}  {e['slug']:<{width}}  {status_text(e):<{swidth}}  {wall}")
    lines.append(f"[sweep] record: {record.path}")
    lines.append(f"[sweep] compare the runs:\n    {sweep.compare_command()}")
    return "\n".join(lines)


def create_experiment(sweep: Sweep) -> str:
    """The sweep's experiment, created before any run with the sweep folder's artifact location (a
    run's tracker finds it by name and never sets one itself when a tracking URI is given)."""
    from mlflow.tracking import MlflowClient

    sweep.folder.mkdir(parents=True, exist_ok=True)
    return get_or_create_experiment(
        MlflowClient(sweep.tracking_uri), sweep.experiment, sweep.artifact_location
    )


def run(sweep: Sweep, stop_on_failure: bool = False, runner: Runner | None = None) -> int:
    """Every combination in turn (``runner``: how one runs, default :func:`launch`); returns the
    sweep's exit status: 0 all finished, 1 some failed, 75 preempted or stopped by a scheduler's
    signal, 130 Ctrl-C."""
    runner = runner or launch
    record = Record(sweep, create_experiment(sweep))
    if record.base_changed():
        print(
            f"[sweep] note: {record.path} was written with other base arguments "
            f"({record.previous.get('base')}); its finished runs are kept as they are",
            flush=True,
        )
    record.write()
    n = len(sweep.combos)
    failed = preempted = False
    signals = SweepSignals().install()
    try:
        for c in sweep.combos:
            if signals.received:
                break
            head = f"[sweep] {c.index}/{n} {c.slug}"
            if c.finished:
                print(f"[sweep] {c.index}/{n} skip {c.slug}: finished", flush=True)
                record.update(c, status="skipped", exit_code=None, wall_s=None)
                continue
            resumed_from = c.checkpoint
            action = f"resuming from {resumed_from}" if resumed_from else "running"
            print(f"{head}: {action} ({c.run_dir})", flush=True)
            record.update(c, status="running", exit_code=None, resumed_from=resumed_from)
            t0 = time.monotonic()
            code = runner(sweep, c, signals)
            wall = time.monotonic() - t0
            if code == 0 and c.finished:
                status = "finished"
            elif signals.received == signal.SIGINT:
                status = "interrupted"
            elif code == EXIT_PREEMPTED or signals.received:
                status = "preempted"
            else:
                status = "failed"
            record.update(c, status=status, exit_code=code, wall_s=round(wall, 3))
            if status == "finished":
                note = ""
            else:
                note = " (exit 0 but no final_metrics.json)" if code == 0 else f" ({exit_text(code)})"
            print(f"{head}: {status}{note} after {wall:.1f} s", flush=True)
            if status == "preempted":
                preempted = True
                break
            if status == "failed":
                failed = True
                if stop_on_failure:
                    print("[sweep] --stop-on-failure: not running the rest", flush=True)
                    break
    finally:
        signals.restore()
    record.add_run_ids()
    print(summary(sweep, record), flush=True)
    if signals.received:
        return signals.exit_status
    return EXIT_PREEMPTED if preempted else 1 if failed else 0


def dry_run(sweep: Sweep) -> str:
    """What :func:`run` would do, with the commands it would launch."""
    lines = [
        f"[sweep] {sweep.name} (sweep id {sweep.sweep_id}): {len(sweep.combos)} combination(s) of "
        f"{' x '.join(sweep.grid)} into MLflow experiment {sweep.experiment!r} at {sweep.tracking_uri}",
    ]
    for c in sweep.combos:
        state = (
            "finished: would skip"
            if c.finished
            else (f"would resume from {c.checkpoint}" if c.checkpoint else "would run")
        )
        lines.append(f"[sweep] {c.index}/{len(sweep.combos)} {c.slug}: {state}")
        lines.append("    " + shlex.join(sweep.command(c)))
    return "\n".join(lines)
