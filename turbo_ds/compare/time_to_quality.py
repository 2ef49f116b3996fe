"""Time to quality (``scripts/bench_vlp.py``): how many training seconds each setting needs to reach
the dense run's final quality less a margin, and how much sooner drop 0.75 gets there.

A row is one setting's run, read from its folder: ``final_metrics.json`` and the curve of
``evals.jsonl`` (per evaluation, ``train/time_s``: time inside optimizer steps up to it, evaluation
excluded, so evaluation cost favours no setting). The time to a target is that of the first evaluation
at or above it: evaluation granularity.
"""

from __future__ import annotations

import json
from pathlib import Path

SETTINGS = {"dense": 0.0, "drop0.5": 0.5, "drop0.75": 0.75}
"""Setting name -> drop ratio; ``dense`` sets the target."""
CURVES = ("test/align_r1", "val/t2v_r1", "test/align_roc_auc", "val/v2t_r1")
"""The metrics a row keeps (final value and curve)."""


def read_row(setting: str, drop_ratio: float, run_dir: Path, steps: int, wall_s: float) -> dict:
    """One setting's row from its finished run folder (``wall_s``: the launch's wall time)."""
    final = json.loads((run_dir / "final_metrics.json").read_text())
    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    return {
        "setting": setting,
        "drop_ratio": drop_ratio,
        "steps": steps,
        "wall_s": wall_s,
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


def time_to_target(rows: list[dict], metrics: list[str], margin: float) -> dict:
    """Per metric: the target (dense's final value - ``margin``), each setting's time to it, and the
    speed-ups of drop 0.75 (time of drop 0.5 or dense / time of drop 0.75; None if either never got
    there)."""
    by = {r["setting"]: r for r in rows}
    summary: dict = {"targets": {}, "time_to_target_s": {}, "speedup_vs_drop0.5": {}, "speedup_vs_dense": {}}
    for m in metrics:
        target = by["dense"]["final"][m] - margin
        t = {r["setting"]: time_to_reach(r, m, target) for r in rows}

        def ratio(a: str, b: str, t=t) -> float | None:
            ta, tb = t.get(a), t.get(b)
            return None if ta is None or tb is None or tb == 0 else ta / tb

        summary["targets"][m] = target
        summary["time_to_target_s"][m] = t
        summary["speedup_vs_drop0.5"][m] = ratio("drop0.5", "drop0.75")
        summary["speedup_vs_dense"][m] = ratio("dense", "drop0.75")
    return summary


def table(rows: list[dict], summary: dict, margin: float, setup: str) -> str:
    """The markdown table of docs/benchmarks.md and the speed-up lines; ``setup`` says what ran."""
    metrics = list(summary["targets"])
    fmt = lambda v, f="{:.0f}": "not reached" if v is None else f.format(v)  # noqa: E731
    lines = [
        f"{setup}. Targets: dense's final value minus {margin}: "
        + ", ".join(f"{m} {summary['targets'][m]:.2f}" for m in metrics)
        + ".",
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
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, metric: str, target: float) -> None:
    """``metric`` (with the target line) and a second quality metric against training time."""
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
