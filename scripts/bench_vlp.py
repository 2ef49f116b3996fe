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
granularity), and ``--json`` / ``--plot`` write the rows and the metric-vs-time curves.
Run it on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from turbo_ds.measure.launch import run_training

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"dense": 0.0, "drop0.5": 0.5, "drop0.75": 0.75}
CURVES = ("test/align_r1", "val/t2v_r1", "test/align_roc_auc", "val/v2t_r1")


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
    final = json.loads((run_dir / "final_metrics.json").read_text())
    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    return {
        "setting": name,
        "drop_ratio": drop,
        "steps": args.steps,
        "wall_s": wall,
        "train_s": final["train/time_s"],
        "clips_per_s": final["train/avg_clips_per_s"],
        "tokens_per_s": final.get("train/tokens_per_s"),
        "final": {k: final[k] for k in CURVES if k in final},
        "curve": [
            {"step": e["step"], "train_s": e["train/time_s"], **{k: e[k] for k in CURVES if k in e}}
            for e in evals
        ],
    }


def time_to_reach(row: dict, metric: str, target: float) -> float | None:
    """Training seconds at the first evaluation whose ``metric`` is at least ``target``."""
    for point in row["curve"]:
        if point.get(metric, float("-inf")) >= target:
            return point["train_s"]
    return None


def table(rows: list[dict], args) -> tuple[str, dict]:
    by = {r["setting"]: r for r in rows}
    metrics = args.metric.split(",")
    summary: dict = {"targets": {}, "time_to_target_s": {}, "speedup_vs_drop0.5": {}, "speedup_vs_dense": {}}
    for m in metrics:
        target = by["dense"]["final"][m] - args.margin
        t = {r["setting"]: time_to_reach(r, m, target) for r in rows}

        def ratio(a: str, b: str, t=t) -> float | None:
            ta, tb = t.get(a), t.get(b)
            return None if ta is None or tb is None or tb == 0 else ta / tb

        summary["targets"][m] = target
        summary["time_to_target_s"][m] = t
        summary["speedup_vs_drop0.5"][m] = ratio("drop0.5", "drop0.75")
        summary["speedup_vs_dense"][m] = ratio("dense", "drop0.75")
    fmt = lambda v, f="{:.0f}": "not reached" if v is None else f.format(v)  # noqa: E731
    lines = [
        f"{args.steps} steps each, evaluation every {args.eval_every} steps, `{args.config}` + `{args.ds_config}`, "
        f"{args.num_gpus} rank(s), {platform.machine()} CPU ({os.cpu_count()} cores). Targets: dense's final value "
        f"minus {args.margin}: " + ", ".join(f"{m} {summary['targets'][m]:.2f}" for m in metrics) + ".",
        "",
        "| setting | drop | wall (s) | train (s) | clips/s | t2v R@1 (%) | v2t R@1 (%) | align R@1 (%) | align ROC-AUC | "
        + " | ".join(f"train s to {m} target" for m in metrics)
        + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in metrics)
        + " |",
    ]
    for r in rows:
        f = r["final"]
        lines.append(
            f"| {r['setting']} | {r['drop_ratio']} | {r['wall_s']:.0f} | {r['train_s']:.0f} | {r['clips_per_s']:.1f} | "
            f"{f.get('val/t2v_r1', float('nan')):.1f} | {f.get('val/v2t_r1', float('nan')):.1f} | "
            f"{f.get('test/align_r1', float('nan')):.1f} | {f.get('test/align_roc_auc', float('nan')):.3f} | "
            + " | ".join(fmt(summary["time_to_target_s"][m][r["setting"]]) for m in metrics)
            + " |"
        )
    lines.append("")
    for m in metrics:
        lines.append(
            f"{m}: time to target, drop 0.75 vs drop 0.5 x{fmt(summary['speedup_vs_drop0.5'][m], '{:.2f}')} faster "
            f"(target >= 2), vs dense x{fmt(summary['speedup_vs_dense'][m], '{:.2f}')} (target >= 3)."
        )
    return "\n".join(lines), summary


def plot(rows: list[dict], path: Path, metric: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(
        axes, (metric, "val/t2v_r1" if metric != "val/t2v_r1" else "test/align_r1"), strict=True
    ):
        for r in rows:
            pts = [p for p in r["curve"] if key in p]
            ax.plot(
                [p["train_s"] for p in pts], [p[key] for p in pts], marker="o", ms=3, label=f"{r['setting']}"
            )
        if key == metric:
            ax.axhline(target, color="grey", ls="--", lw=1, label="target (dense final - margin)")
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Video-text pretraining on the demo: quality against training time")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


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
    text, summary = table(rows, args)
    print(text)
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
