"""The planner against measured peaks of real trainer steps on configs it was not tuned on (the logic
of ``scripts/bench_plan.py``): fixed cases, and cases drawn at random (seeded) over models, frames,
resolutions, micro batches, ZeRO stages, world sizes, bucket sizes, drop ratios, checkpointing and
tasks. Each case is measured by :func:`turbo_ds.measure.run.measure_config` (every rank in its own
process, from an empty start; the steps' peak) and predicted by the planner for the same config.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20
BASE = "configs/demo_classification.yaml"
VT = "configs/demo_video_text.yaml"
LONG = "configs/demo_long_video.yaml"
TASK_CONFIGS = {"classification": BASE, "video_text": VT, "long_video": LONG}
SMALL_BUCKET = 1_000_000


@dataclass
class Case:
    """One config: ``ds_config`` is a shipped file's stem (``zero2``) or ``zero<k>-small`` (that
    stage's shipped file with ``SMALL_BUCKET``-element buckets: activations and model states, not
    DeepSpeed's buffers, decide the peak of these small models)."""

    name: str
    config: str
    ds_config: str
    world: int
    overrides: list[str] = field(default_factory=list)


def vit(d: int, depth: int, heads: int, patch: int = 8) -> str:
    return (
        f"model.overrides={{embed_dim: {d}, depth: {depth}, num_heads: {heads}, patch_size: {patch}, "
        "tubelet_size: 2, pool: mean}"
    )


FIXED_CASES = [
    Case("96-d x6, 16 fr, b4, ZeRO-0", BASE, "zero0", 1, [vit(96, 6, 3), "data.num_frames=16", "optim.micro_batch_size=4"]),
    Case("256-d x3, 8 fr 64px, b2, ZeRO-1 x2", BASE, "zero1-small", 2, [vit(256, 3, 8), "data.img_size=64", "optim.micro_batch_size=2"]),
    Case("128-d x8, 32 fr, drop .9 ckpt, ZeRO-2 x2", BASE, "zero2-small", 2, [vit(128, 8, 4), "data.num_frames=32", "token_dropout.drop_ratio=0.9", "model.activation_checkpointing=torch"]),
    Case("160-d x4, 16 fr 64px p16, b8, ZeRO-2", BASE, "zero2-small", 1, [vit(160, 4, 4, 16), "data.num_frames=16", "data.img_size=64", "optim.micro_batch_size=8"]),
    Case("128-d x6, 16 fr, tube .75, ZeRO-3 x2", BASE, "zero3-small", 2, [vit(128, 6, 4), "data.num_frames=16", "token_dropout.drop_ratio=0.75", "token_dropout.strategy=tube"]),
    Case("64-d x4 demo, ZeRO-2 x2 (zero2.json)", BASE, "zero2", 2, []),
    Case("video-text demo, ZeRO-2 x2", VT, "zero2-small", 2, []),
    # The config that showed the optimizer-step overcount (issue 15): ViT-S/16, ZeRO-1, one rank, fp32.
    Case("ViT-S/16, 48 fr 112px, b2, drop .75 ckpt, ZeRO-1", BASE, "zero1", 1, ["model.name=vit_small_patch16", "model.overrides={pool: mean}", "data.num_frames=48", "data.img_size=112", "optim.micro_batch_size=2", "token_dropout.drop_ratio=0.75", "model.activation_checkpointing=torch"]),
]  # fmt: skip

# Widths with a head count that divides them; depth, patch and the rest are drawn independently.
MODELS = [(64, 2), (96, 3), (128, 4), (192, 3), (256, 4), (384, 6)]


def random_cases(n: int, seed: int = 0) -> list[Case]:
    """``n`` configs drawn with ``random.Random(seed)``, each small enough to run on a CPU in well
    under a minute (tokens per rank and width are capped together)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        task = rng.choice(list(TASK_CONFIGS))
        small = rng.random() < 0.15  # now and then the real ViT-S/16
        d, heads = (384, 6) if small else rng.choice(MODELS)
        depth = 12 if small else rng.randint(2, 8)
        patch = 16 if small else rng.choice([8, 8, 16])
        img = rng.choice([s for s in (32, 48, 64, 96, 112) if s % patch == 0 and s // patch >= 2])
        frames = rng.choice([4, 8, 16, 32, 48, 64])
        batch = rng.choice([4, 8]) if task == "video_text" else rng.choice([1, 2, 4, 8])
        # (long_video without dropout needs task.eval_draw_ratio: the demo config leaves it unset)
        drop = rng.choice([0.0, 0.5, 0.75, 0.9] if task != "long_video" else [0.5, 0.75, 0.9, 0.9])
        ckpt = rng.random() < 0.5
        stage, world = rng.randint(0, 3), rng.randint(1, 2)
        bucket = "shipped" if stage == 0 or rng.random() < 0.4 else "small"
        kept = batch * (frames // 2) * (img // patch) ** 2 * (1 - drop)  # tokens through the encoder
        if kept > 8192 or kept * d * depth > 2e7:
            continue  # too slow for a CPU benchmark
        model = (
            ["model.name=vit_small_patch16", "model.overrides={pool: mean}"]
            if small
            else [vit(d, depth, heads, patch)]
        )
        overrides = model + [
            f"data.num_frames={frames}",
            f"data.img_size={img}",
            f"optim.micro_batch_size={batch}",
            f"token_dropout.drop_ratio={drop}",
            f"model.activation_checkpointing={'torch' if ckpt else 'none'}",
        ]
        ds = f"zero{stage}" + ("-small" if bucket == "small" else "")
        shape = "ViT-S/16" if small else f"{d}-d x{depth} p{patch}"
        name = (
            f"r{len(cases)}: {task}, {shape}, {frames} fr {img}px, b{batch}, drop {drop:g}"
            f"{' ckpt' if ckpt else ''}, {ds} x{world}"
        )
        cases.append(Case(name, TASK_CONFIGS[task], ds, world, overrides))
    return cases


def ds_config_path(name: str, tmp: Path) -> Path:
    """The ds_config a case names (see :class:`Case`), written to ``tmp`` when it is a small one."""
    stem = name.removesuffix("-small")
    path = ROOT / "ds_configs" / f"{stem}.json"
    if stem == name:
        return path
    ds = json.loads(path.read_text())
    z = ds["zero_optimization"]
    z["reduce_bucket_size"] = SMALL_BUCKET
    z["allgather_bucket_size" if z.get("stage", 0) < 3 else "stage3_prefetch_bucket_size"] = SMALL_BUCKET
    out = tmp / f"{stem}_small.json"
    out.write_text(json.dumps(ds))
    return out


def run_case(case: Case, tmp: Path, steps: int = 2, repeats: int = 3) -> dict[str, Any]:
    """Measure ``case`` (``steps`` trainer steps, ``repeats`` times) and predict it: one row of the
    table: the largest peak (over ranks) of each run; the error against the highest and the lowest
    run. The same config's peak varies from run to run: with two ranks, when asynchronous collectives
    let go of their buffers; on one rank too, when gloo's worker thread drops the last reference to a
    gradient bucket: the profiler records the main thread's frees only, so that bucket then counts as
    live to the end (the lowest run is the one that missed fewest frees)."""
    from turbo_ds.config import load_config
    from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config
    from turbo_ds.measure.run import measure_config
    from turbo_ds.plan.from_config import plan_inputs
    from turbo_ds.plan.planner import plan

    ds_path = ds_config_path(case.ds_config, tmp)
    overrides = case.overrides + [f"train.max_steps={steps + 2}"]
    t0 = time.perf_counter()
    runs = [
        measure_config(case.config, str(ds_path), overrides, world=case.world, steps=steps)
        for _ in range(repeats)
    ]
    measured = max(runs, key=lambda m: m["peak_bytes"])
    cfg = load_config(case.config, overrides + ["optim.warmup_steps=0"])
    ds = fill_ds_config(load_ds_config(ds_path), cfg, case.world)
    p = plan(*plan_inputs(cfg, ds, case.world, "cpu"))
    err = 100 * (p.total / measured["peak_bytes"] - 1)
    low = min(m["peak_bytes"] for m in runs)
    return {
        **asdict(case),
        "overrides": overrides,
        "measured_mb": round(measured["peak_bytes"] / MiB, 2),
        "measured_min_mb": round(low / MiB, 2),  # the lowest run's peak
        "error_vs_lower_pct": round(100 * (p.total / low - 1), 2),
        "runs_per_rank_mb": [[round(b / MiB, 2) for b in m["per_rank_bytes"]] for m in runs],
        "measured_phases_mb": {k: round(v / MiB, 2) for k, v in measured["phase_peak_bytes"].items()},
        "predicted_phases_mb": p.to_dict()["phases_mb"],
        "predicted_mb": round(p.total_mb, 2),
        "error_pct": round(err, 2),
        "phase": p.phase,
        "items_mb": p.to_dict()["items_mb"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_bench(
    cases: list[Case],
    json_path: str | None = None,
    steps: int = 2,
    repeats: int = 3,
    only: set[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every case (or those numbered in ``only``), a line printed for each; the result (rows,
    :func:`summary`, the cases that failed to run) is written to ``json_path`` after every row."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for i, case in enumerate(cases):
        if only is not None and i not in only:
            continue
        try:
            row = {"row": i, **run_case(case, tmp, steps, repeats)}
            rows.append(row)
            print(
                f"{i:>2} {case.name:<72} measured {row['measured_min_mb']:9.1f} / {row['measured_mb']:.1f} MiB"
                f"  predicted {row['predicted_mb']:9.1f} MiB  {row['error_pct']:+6.1f}% / "
                f"{row['error_vs_lower_pct']:+6.1f}%  ({row['phase']})",
                flush=True,
            )
        except Exception as e:  # noqa: BLE001 - one config that does not run is reported, not fatal
            print(f"{i:>2} {case.name:<72} FAILED: {type(e).__name__}: {str(e)[-300:]}", flush=True)
            failed.append({"row": i, "name": case.name, "error": f"{type(e).__name__}: {e}"})
        result = {"rows": rows, **summary(rows), "failed": failed, "seed": seed, "steps": steps}
        result.update(repeats=repeats, device="cpu", measurement="profiler_memory_events")
        if json_path:  # after every row: a long run that stops keeps what it measured
            Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Worst and median absolute error (percent) of the rows, against the highest and the lowest
    measured run."""
    out = {}
    for key, name in (("error_pct", ""), ("error_vs_lower_pct", "_vs_lower")):
        errors = [abs(r[key]) for r in rows]
        out[f"worst_abs_error{name}_pct"] = max(errors, default=0.0)
        out[f"median_abs_error{name}_pct"] = round(statistics.median(errors), 2) if errors else 0.0
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the Markdown table of ``docs/benchmarks.md``: the lowest and the highest measured
    run's peak, the error against each."""
    lines = [
        "| # | config (task, model, clip, batch, drop, ds_config x ranks) | measured MiB | predicted MiB "
        "| error (vs lowest) | error (vs highest) | peak at (predicted) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lo, hi = r["measured_min_mb"], r["measured_mb"]
        measured = f"{hi:,.1f}" if lo == hi else f"{lo:,.1f} / {hi:,.1f}"
        lines.append(
            f"| {r['row']} | {r['name']} | {measured} | {r['predicted_mb']:,.1f} | {r['error_vs_lower_pct']:+.1f}% "
            f"| {r['error_pct']:+.1f}% | {r['phase']} |"
        )
    return "\n".join(lines)
