"""The planner against measured peaks on configs it was not tuned on: real trainer steps (task, data,
DeepSpeed engine, ds_config) on 1 or 2 local CPU ranks, each measured by
``turbo_ds.plan.measure_run`` (profiler memory events from an empty start; the steps' peak), beside
``python -m turbo_ds.plan``'s prediction for the same config. A benchmark, not a test.

    python scripts/bench_plan.py --json docs/bench_plan.json

The planner's constants were fixed on a 192-wide, 4-block ViT at 8 and 32 frames (ZeRO 0-3, world
1-2; see docs/memory.md); every case below differs from those in model, frames, resolution, batch,
drop ratio, checkpointing, stage or task.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2**20
BASE = "configs/demo_classification.yaml"
VT = "configs/demo_video_text.yaml"


def vit(d, depth, heads, patch=8):
    return f"model.overrides={{embed_dim: {d}, depth: {depth}, num_heads: {heads}, patch_size: {patch}, tubelet_size: 2, pool: mean}}"


# (name, config, ds_config, world, overrides); "small" buckets: see zero_small() below.
CASES = [
    ("96-d x6, 16 fr, b4, ZeRO-0", BASE, "zero0", 1, [vit(96, 6, 3), "data.num_frames=16", "optim.micro_batch_size=4"]),
    ("256-d x3, 8 fr 64px, b2, ZeRO-1 x2", BASE, "zero1-small", 2, [vit(256, 3, 8), "data.img_size=64", "optim.micro_batch_size=2"]),
    ("128-d x8, 32 fr, drop .9 ckpt, ZeRO-2 x2", BASE, "zero2-small", 2, [vit(128, 8, 4), "data.num_frames=32", "token_dropout.drop_ratio=0.9", "model.activation_checkpointing=torch"]),
    ("160-d x4, 16 fr 64px p16, b8, ZeRO-2", BASE, "zero2-small", 1, [vit(160, 4, 4, 16), "data.num_frames=16", "data.img_size=64", "optim.micro_batch_size=8"]),
    ("128-d x6, 16 fr, tube .75, ZeRO-3 x2", BASE, "zero3-small", 2, [vit(128, 6, 4), "data.num_frames=16", "token_dropout.drop_ratio=0.75", "token_dropout.strategy=tube"]),
    ("64-d x4 demo, ZeRO-2 x2 (zero2.json)", BASE, "zero2", 2, []),
    ("video-text demo, ZeRO-2 x2", VT, "zero2-small", 2, []),
]  # fmt: skip


def zero_small(stage: int, out: Path) -> Path:
    """The shipped ds_config of ``stage`` with 1e6-element buckets: small enough that activations and
    model states, not DeepSpeed's buffers, decide the peak of these small models."""
    ds = json.loads((ROOT / "ds_configs" / f"zero{stage}.json").read_text())
    z = ds["zero_optimization"]
    z["reduce_bucket_size"] = 1_000_000
    if stage < 3:
        z["allgather_bucket_size"] = 1_000_000
    else:
        z["stage3_prefetch_bucket_size"] = 1_000_000
    path = out / f"zero{stage}_small.json"
    path.write_text(json.dumps(ds))
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="case indices")
    args = ap.parse_args(argv)
    from turbo_ds.config import load_config
    from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config
    from turbo_ds.plan import plan
    from turbo_ds.plan.from_config import plan_inputs
    from turbo_ds.plan.measure_run import measure_config

    tmp = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    rows = []
    for i, (name, config, ds_name, world, overrides) in enumerate(CASES):
        if args.only is not None and str(i) not in args.only:
            continue
        ds_path = (
            zero_small(int(ds_name[4]), tmp)
            if ds_name.endswith("-small")
            else ROOT / "ds_configs" / f"{ds_name}.json"
        )
        overrides = overrides + ["train.max_steps=4"]
        t0 = time.perf_counter()
        measured = measure_config(config, str(ds_path), overrides, world=world, steps=2)
        cfg = load_config(config, overrides + ["optim.warmup_steps=0"])
        p = plan(*plan_inputs(cfg, fill_ds_config(load_ds_config(ds_path), cfg, world), world, "cpu"))
        err = 100 * (p.total / measured["peak_bytes"] - 1)
        rows.append({
            "case": name, "config": config, "ds_config": ds_name, "world": world, "overrides": overrides,
            "measured_mb": round(measured["peak_bytes"] / MiB, 2), "predicted_mb": round(p.total_mb, 2),
            "error_pct": round(err, 2), "phase": p.phase, "items_mb": p.to_dict()["items_mb"],
            "seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
        print(
            f"{name:<44} measured {measured['peak_bytes'] / MiB:9.1f} MiB  predicted {p.total_mb:9.1f} MiB  {err:+6.1f}%",
            flush=True,
        )
    worst = max((abs(r["error_pct"]) for r in rows), default=0.0)
    print(f"\nworst |error| {worst:.1f}% over {len(rows)} configs (target: within 15%)")
    result = {
        "rows": rows,
        "worst_abs_error_pct": worst,
        "device": "cpu",
        "measurement": "profiler_memory_events",
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
