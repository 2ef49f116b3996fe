"""``python -m turbo_ds.plan``: predict (and with ``--measure`` measure) a config's per-rank peak."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from turbo_ds.cli import add_debug_flag


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m turbo_ds.plan",
        description="Per-rank peak memory of a turbo_ds training config, itemised; does it fit?",
    )
    p.add_argument("--config", required=True, help="experiment YAML (configs/)")
    p.add_argument("--ds_config", default=None, help="DeepSpeed JSON (default ds_configs/zero0.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--world", type=int, default=1, help="data-parallel ranks (GPUs in all)")
    p.add_argument(
        "--gpu-mem", default=None, help="memory per GPU: 80GiB, 40GB, 24576MiB, or a name (a100-80gb, h100)"
    )
    p.add_argument(
        "--reserve",
        default="1GiB",
        help="kept free of tensors on a GPU: CUDA context, allocator fragmentation (default 1GiB)",
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="plan for a GPU (default) or the CPU (default with --measure on a machine without CUDA)",
    )
    p.add_argument("--json", default=None, help="write the breakdown (predicted_mb, measured_mb) here")
    p.add_argument(
        "--measure", action="store_true", help="also run a few real training steps and measure the peak"
    )
    p.add_argument(
        "--core",
        action="store_true",
        help="the model core alone (torch AdamW, no DeepSpeed, synthetic clips): for machines without deepspeed",
    )
    p.add_argument("--steps", type=int, default=3, help="steps measured by --measure")
    add_debug_flag(p)
    return p


def run(args) -> dict:
    import torch

    from turbo_ds.config import load_config
    from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config
    from turbo_ds.plan.fit import describe, fit_report, parse_memory
    from turbo_ds.plan.from_config import plan_inputs
    from turbo_ds.plan.model_states import StateSetup
    from turbo_ds.plan.planner import plan

    if args.world < 1:
        raise ValueError(f"--world must be >= 1, got {args.world}")
    device = args.device or ("cpu" if args.measure and not torch.cuda.is_available() else "cuda")
    budget = parse_memory(args.gpu_mem) if args.gpu_mem else None
    reserve = parse_memory(args.reserve) if device == "cuda" else 0
    cfg = load_config(args.config, args.overrides)
    ds_path = args.ds_config = args.ds_config or str(
        Path(__file__).resolve().parents[2] / "ds_configs" / "zero0.json"
    )
    # The trainer's own checks: batch sizes that disagree with the ds_config fail here, as they would there.
    ds = fill_ds_config(load_ds_config(ds_path), cfg, args.world, bf16_supported=device == "cuda")
    workload, counts, setup, notes = plan_inputs(cfg, ds, args.world, device)
    if args.core:
        setup = StateSetup("torch", precision=workload.precision)
        notes.append("model core: torch AdamW in the model dtype, no DeepSpeed, no ZeRO")
    result = plan(workload, counts, setup, notes)
    print(
        f"turbo_ds.plan: {args.config} with {Path(ds_path).name}, world {args.world}, {device}, {workload.precision}"
    )
    print(
        f"  clip {workload.batch_size} x {workload.num_frames} x {workload.vit.img_size}^2 -> {workload.tokens} tokens, "
        f"{workload.kept} kept (drop {workload.drop_ratio}), {workload.checkpoint_blocks}/{workload.vit.depth} blocks "
        f"checkpointed, {counts.trainable / 1e6:.1f}M trainable of {counts.total / 1e6:.1f}M parameters"
    )
    print(describe(result))
    for n in result.notes:
        print(f"  note: {n}")
    out = {"config": args.config, "ds_config": ds_path, "world": args.world, **result.to_dict()}
    if budget is not None:
        usable = budget - reserve
        rep = fit_report(workload, counts, setup, usable)
        verdict = "FITS" if rep.fits else "DOES NOT FIT"
        print(
            f"{verdict} in {budget / 2**30:.1f} GiB ({usable / 2**30:.1f} GiB usable after the {reserve / 2**30:.1f} GiB reserve): "
            f"headroom {rep.headroom_bytes / 2**20:,.0f} MiB"
        )
        from turbo_ds.plan.fit import MAX_BATCH, MAX_FRAMES

        def capped(v: int, cap: int) -> str:
            return f">= {v} (the search's cap)" if v >= cap - workload.vit.tubelet_size else str(v)

        print(
            f"  largest micro batch that fits: {capped(rep.max_micro_batch, MAX_BATCH)} (at {workload.num_frames} frames)"
        )
        print(
            f"  largest frame count that fits: {capped(rep.max_frames, MAX_FRAMES)} (at micro batch {workload.batch_size})"
        )
        for s in rep.suggestions:
            print(f"  would fit with {s}")
        out["fit"] = rep.to_dict()
    if args.measure:
        measured = measure(args, workload, device)
        if skipped := measured.get("weights_not_loaded"):
            print(
                f"  note: measured with the model's own initialisation, not {', '.join(f'{k} ({v})' for k, v in skipped.items())}: memory does not depend on the weights' values"
            )
        err = 100.0 * (result.total / measured["peak_bytes"] - 1)
        print(
            f"measured peak {measured['peak_bytes'] / 2**20:,.1f} MiB ({measured['method']}); predicted {result.total_mb:,.1f} MiB ({err:+.1f}%)"
        )
        out.update(
            measured_mb=round(measured["peak_bytes"] / 2**20, 2),
            error_pct=round(err, 2),
            measurement=measured,
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def measure(args, workload, device: str) -> dict:
    """The real peak: the model core (``--core``) or the trainer's steps, in fresh processes."""
    if args.core:
        from turbo_ds.measure.probe import measure_in_fresh_process

        return measure_in_fresh_process(workload, device, args.steps)
    from turbo_ds.measure.run import measure_config

    return measure_config(
        args.config, args.ds_config or "ds_configs/zero0.json", args.overrides, args.world, args.steps
    )


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 for a config or input error (``turbo_ds: error: ...``, one line on stderr, as
    the trainer prints it; ``--debug`` adds the traceback): see :mod:`turbo_ds.cli`."""
    from turbo_ds.cli import run_cli

    return run_cli(lambda a: run(build_parser().parse_args(a)), argv, process_group=False)


if __name__ == "__main__":
    sys.exit(main())
