"""``scripts/sweep.py``: the command line of a sweep (see ``turbo_ds.sweep``)."""

from __future__ import annotations

import argparse

from turbo_ds.cli import add_debug_flag, add_set_flag
from turbo_ds.sweep.spec import DEFAULT_OUT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run every combination of a grid of config values with scripts/train.py, into one "
        "MLflow experiment; rerunning the same command skips finished runs and resumes interrupted ones."
    )
    p.add_argument("--config", required=True, help="experiment YAML every run starts from")
    p.add_argument("--ds_config", required=True, help="DeepSpeed JSON every run uses")
    p.add_argument(
        "--num_gpus",
        type=int,
        default=1,
        help="processes per run: 1 = python scripts/train.py, more = under the deepspeed launcher",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2",
        help="a varied key and its values, as YAML (repeatable: every combination runs)",
    )
    add_set_flag(p, help="a config value every run gets (repeatable)")
    p.add_argument("--name", default=None, help="sweep name (default: <config stem>__<varied keys>)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"where the sweep folder goes (default {DEFAULT_OUT})")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep name)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/<name>/mlflow.db)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the combinations and commands, run nothing")
    p.add_argument("--stop-on-failure", action="store_true", help="stop at the first run that fails")
    add_debug_flag(p, help="tracebacks for config errors, here and in the runs")
    return p


def main(argv: list[str] | None = None) -> int:
    from turbo_ds.sweep import run, spec

    args = build_parser().parse_args(argv)
    try:
        sweep = spec.build(
            args.config,
            args.ds_config,
            args.grid,
            args.overrides,
            num_gpus=args.num_gpus,
            name=args.name,
            out=args.out,
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            debug=args.debug,
        )
        if args.dry_run:
            print(run.dry_run(sweep), flush=True)
            return 0
        return run.run(sweep, stop_on_failure=args.stop_on_failure)
    except KeyboardInterrupt:  # before or after the runs (during them the sweep handles Ctrl-C)
        print("\n[sweep] interrupted", flush=True)
        return 130
