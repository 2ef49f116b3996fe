#!/usr/bin/env python
"""Does drop 0.75 reach the same video-text quality much sooner? Dense vs drop 0.5 vs drop 0.75.

    python scripts/bench_vlp.py --config configs/demo_video_text.yaml --ds_config ds_configs/zero2.json \
        --num_gpus 2 [--steps 1200] [--eval-every 100] [--metric test/align_r1] [--set k=v ...]

Each setting is a normal ``scripts/train.py`` launch with the same schedule, seed and evaluation points
(retrieval and HTM-Align alignment every ``--eval-every`` steps), one after the other, into one MLflow
experiment (``bench_vlp`` in ``<out>/mlflow.db``). Quality is read against *training* wall time (the
trainer's ``evals.jsonl``: time inside optimizer steps up to each evaluation, evaluation excluded), so
evaluation cost does not favour any setting. The target is dense's final ``--metric`` minus
``--margin`` points; the table gives the training time each setting needs to reach it (at evaluation
granularity), and ``--json`` / ``--plot`` write the rows and the metric-vs-time curves (the reading:
``turbo_ds.compare.time_to_quality``). Run it on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from turbo_ds.compare.time_to_quality import SETTINGS, plot, read_row, table, time_to_target
from turbo_ds.measure.launch import run_training


def run_setting(name: str, drop: float, args, out: Path) -> dict:
    run_dir = out / name
    sets = [
        f"output_dir={run_dir}",
        f"token_dropout.drop_ratio={drop}",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        "train.progress_bar=false",
        "checkpoint.every_steps=0",
        "checkpoint.save_final=false",
        "tracking.experiment=bench_vlp",
        f"tracking.tracking_uri=sqlite:///{out.resolve()}/mlflow.db",
        f"tracking.run_name={name}",
        *args.set,
    ]
    if (run_dir / "evals.jsonl").exists():
        (run_dir / "evals.jsonl").unlink()  # a rerun replaces the curve, it does not extend it
    wall = run_training(name, args.config, args.ds_config, sets, args.num_gpus, args.master_port)
    return read_row(name, drop, run_dir, args.steps, wall)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo_video_text.yaml")
    p.add_argument("--ds_config", default="ds_configs/zero2.json")
    p.add_argument("--num_gpus", type=int, default=2)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--eval-every", dest="eval_every", type=int, default=100)
    p.add_argument(
        "--metric",
        default="test/align_r1,val/t2v_r1",
        help="quality metric(s) for the time-to-target (comma list)",
    )
    p.add_argument("--margin", type=float, default=2.0, help="points below dense's final value")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {list(SETTINGS)}")
    p.add_argument("--out", default="runs/bench_vlp")
    p.add_argument("--master_port", type=int, default=29521)
    p.add_argument("--set", action="append", default=[], help="extra overrides for every setting")
    p.add_argument("--json", default=None, help="write the rows and the summary here")
    p.add_argument("--plot", default=None, help="PNG of the metric against training time")
    args = p.parse_args(argv)
    names = args.settings.split(",")
    if "dense" not in names:
        raise SystemExit("--settings must include dense (the target is dense's final quality)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_setting(n, SETTINGS[n], args, out) for n in names]
    summary = time_to_target(rows, args.metric.split(","), args.margin)
    setup = (
        f"{args.steps} steps each, evaluation every {args.eval_every} steps, `{args.config}` + `{args.ds_config}`, "
        f"{args.num_gpus} rank(s), {platform.machine()} CPU ({os.cpu_count()} cores)"
    )
    print(table(rows, summary, args.margin, setup))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": summary, "rows": rows, "argv": sys.argv[1:]}, indent=2)
        )
    if args.plot:
        first = args.metric.split(",")[0]
        plot(rows, Path(args.plot), first, summary["targets"][first])
    return {"summary": summary, "rows": rows}


if __name__ == "__main__":
    main()
