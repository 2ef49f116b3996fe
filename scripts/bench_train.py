#!/usr/bin/env python
"""Dense vs Turbo on the demo classification task: same steps, wall time, clips/s, validation top-1.

    python scripts/bench_train.py --config configs/demo_classification.yaml \
        --ds_config ds_configs/zero2.json --num_gpus 2 [--steps 600] [--write-docs]

Each variant is a normal ``scripts/train.py`` launch (``deepspeed --num_gpus N``, or plain python for
1) with overrides: dense = drop 0, no Partial-MAE; turbo = drop ``--drop`` (0.75) + Partial-MAE. Both
runs log to one MLflow experiment (``bench_train``) in ``<out>/mlflow.db``. ``--write-docs`` replaces
the "Training: dense vs Turbo" section of docs/benchmarks.md with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from turbo_ds.measure.launch import run_training

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Training: dense vs Turbo (scripts/bench_train.py)"


def run_variant(name: str, overrides: list[str], args, out: Path) -> dict:
    run_dir = out / name
    sets = [
        f"output_dir={run_dir}",
        f"train.max_steps={args.steps}",
        "train.eval_every=0",
        "train.progress_bar=false",
        "checkpoint.every_steps=0",
        "checkpoint.save_final=false",
        "tracking.experiment=bench_train",
        f"tracking.tracking_uri=sqlite:///{out.resolve()}/mlflow.db",
        f"tracking.run_name={name}",
        *overrides,
        *args.set,
    ]
    wall = run_training(name, args.config, args.ds_config, sets, args.num_gpus, args.master_port)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return {
        "variant": name,
        "steps": args.steps,
        "wall_s": wall,
        "train_s": final["train/time_s"],
        "clips_per_s": final["train/avg_clips_per_s"],
        "tokens_per_s": final.get("train/tokens_per_s"),
        "peak_mem_mb": final.get("train/peak_mem_mb"),
        "val_top1": final.get("val/top1"),
        "val_top5": final.get("val/top5"),
        "test_top1": final.get("test/top1"),
    }


def table(results: list[dict], args) -> str:
    dense, turbo = results
    lines = [
        f"### {args.label}",
        "",
        f"Demo classification task (4 motion directions, `{args.config}`), {args.steps} steps each, "
        f"`{args.ds_config}`, {args.num_gpus} rank(s), {platform.machine()} CPU ({os.cpu_count()} cores), "
        f"`python scripts/bench_train.py --steps {args.steps} --num_gpus {args.num_gpus} "
        + " ".join(f"--set '{x}'" for x in args.set)
        + f" --label '{args.label}'`. "
        "Wall = the whole launch (start-up, data, evaluation); train = time inside optimizer steps; "
        "val top-1 with all tokens, one centre view.",
        "",
        "| variant | steps | token drop | Partial-MAE | wall (s) | train (s) | clips/s | peak RSS (MiB) | val top-1 (%) | test top-1, multi-view (%) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r, drop, pmae in ((dense, 0.0, "no"), (turbo, args.drop, "yes")):
        test = "-" if r["test_top1"] is None else f"{r['test_top1']:.1f}"
        lines.append(
            f"| {r['variant']} | {r['steps']} | {drop} | {pmae} | {r['wall_s']:.0f} | {r['train_s']:.0f} | "
            f"{r['clips_per_s']:.1f} | {r['peak_mem_mb']:.0f} | {r['val_top1']:.1f} | {test} |"
        )
    lines += [
        "",
        f"Turbo / dense: train time x{turbo['train_s'] / dense['train_s']:.2f}, wall time x{turbo['wall_s'] / dense['wall_s']:.2f}, "
        f"val top-1 {turbo['val_top1'] - dense['val_top1']:+.1f} points (target: within 2 points in at most 1/3 of the time).",
        f"MLflow: `mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///{(Path(args.out).resolve() / 'mlflow.db')}` (experiment `bench_train`).",
        "",
    ]
    return "\n".join(lines)


def write_docs(text: str, path: Path, label: str) -> None:
    """Put ``text`` (a "### label" block) into the bench section, replacing an older block of that label."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION not in old:
        old = old.rstrip("\n") + "\n\n" + SECTION + "\n"
    head, rest = old.split(SECTION, 1)
    nxt = rest.find("\n## ")
    body, tail = (rest[:nxt], rest[nxt + 1 :]) if nxt >= 0 else (rest, "")
    blocks = [b for b in body.split("\n### ") if b.strip()]
    intro = "" if body.lstrip("\n").startswith("### ") else blocks.pop(0).strip("\n")
    kept = ["### " + b.strip("\n") if not b.startswith("### ") else b.strip("\n") for b in blocks]
    kept = [b for b in kept if not b.startswith(f"### {label}\n")]
    kept.append(text.strip("\n"))
    parts = [SECTION, ""] + ([intro, ""] if intro else []) + [b + "\n" for b in kept]
    new = head + "\n".join(parts) + ("\n" + tail if tail else "")
    path.write_text(new)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo_classification.yaml")
    p.add_argument("--ds_config", default="ds_configs/zero2.json")
    p.add_argument("--num_gpus", type=int, default=2)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--drop", type=float, default=0.75, help="Turbo token drop ratio")
    p.add_argument("--out", default="runs/bench_train")
    p.add_argument("--master_port", type=int, default=29511)
    p.add_argument("--set", action="append", default=[], help="extra overrides for both variants")
    p.add_argument(
        "--label",
        default="Demo setup: 4-block 64-d ViT, 32x32 input, 8 frames, 64 tokens per clip",
        help="sub-heading in docs",
    )
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [
        run_variant(
            "dense",
            ["token_dropout.drop_ratio=0.0", "token_dropout.final_dense_steps=0", "pmae.enabled=false"],
            args,
            out,
        ),
        run_variant("turbo", [f"token_dropout.drop_ratio={args.drop}", "pmae.enabled=true"], args, out),
    ]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results, args)
    print(text)
    if args.write_docs:
        write_docs(text, ROOT / "docs" / "benchmarks.md", args.label)
    return results


if __name__ == "__main__":
    main()
