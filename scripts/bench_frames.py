"""Frames per memory budget: the longest clip one full training step (forward, backward, AdamW step)
fits in, for dense and Turbo settings, measured, with the planner's prediction beside each row.

    python scripts/bench_frames.py --json docs/bench_frames.json --plot docs/bench_frames.png   # CPU default
    python scripts/bench_frames.py --preset gpu --json bench_frames_gpu.json                  # ViT-B/16, bf16

For every setting the frame count is searched on measurements alone (doubling, then bisection to
``--granularity`` frames): a frame count "fits" when the measured peak of its training step is at most
the budget. Peaks are measured by ``turbo_ds.engine.memory.PeakMemory``: on the CPU torch's profiler
memory events (every tensor allocation and free, summed: tensor memory only, counted from an empty
start in a fresh subprocess per probe, independent of the planner's arithmetic); on a GPU the CUDA
allocator's ``max_memory_allocated`` (probes in one process, reset between them). The planner's
prediction for the same step is computed afterwards for the row and is never used by the search.
Needs torch alone (matplotlib only for ``--plot``).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from turbo_ds.measure.core_step import build_model
from turbo_ds.measure.probe import measure_in_fresh_process
from turbo_ds.models.config import ViTConfig
from turbo_ds.plan import DecoderShape, StateSetup, Workload, plan
from turbo_ds.plan.params import count_on_meta

MiB = 2**20
PRESETS = {
    # ViT-Ti/8 (width 192, 12 blocks) on 32 x 32 frames, fp32, 128 MiB: minutes on 2 cores.
    "cpu": dict(
        model=dict(embed_dim=192, depth=12, num_heads=3, patch_size=8, img_size=32),
        budget_mb=128, device="cpu", precision="fp32", granularity=8, start_frames=16,
    ),
    # ViT-B/16 on 224 x 224 frames, the model in bf16 (as DeepSpeed's bf16 engine holds it), 8 GiB.
    "gpu": dict(
        model=dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, img_size=224),
        budget_mb=8192, device="cuda", precision="bf16", granularity=16, start_frames=16,
    ),
    # Seconds: the script itself (tests).
    "smoke": dict(
        model=dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32),
        budget_mb=6, device="cpu", precision="fp32", granularity=64, start_frames=64,  # few probes: a test
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Setting:
    name: str
    drop_ratio: float
    checkpointing: bool
    pmae_ratio: float = 0.0  # 0 = no Partial-MAE decoder


SETTINGS = (
    Setting("dense", 0.0, False),
    Setting("dense + ckpt", 0.0, True),
    Setting("turbo 0.75 + ckpt", 0.75, True),
    Setting("turbo 0.9 + ckpt", 0.9, True),
    Setting("turbo 0.9 + ckpt + Partial-MAE", 0.9, True, pmae_ratio=0.1),
)


def workload(preset: dict, setting: Setting, frames: int) -> Workload:
    m = preset["model"]
    vit = ViTConfig(
        img_size=m["img_size"], num_frames=frames, patch_size=m["patch_size"], tubelet_size=2,
        embed_dim=m["embed_dim"], depth=m["depth"], num_heads=m["num_heads"], num_classes=10,
        drop_ratio=setting.drop_ratio,
    )  # fmt: skip
    decoder = None
    if setting.pmae_ratio:
        dim = max(64, m["embed_dim"] // 2)
        decoder = DecoderShape(dim=dim, depth=1, heads=max(1, dim // 64), pmae_ratio=setting.pmae_ratio)
    return Workload(
        vit, batch_size=1, drop_ratio=setting.drop_ratio,
        checkpoint_blocks=m["depth"] if setting.checkpointing else 0, decoder=decoder,
        precision=preset["precision"], attention="efficient", device=preset["device"],
    )  # fmt: skip


def measure(w: Workload, device: str) -> dict:
    """One probe: the step's measured peak (and time); {"oom": True} when a GPU runs out."""
    if device == "cpu":  # the CPU count needs a process whose every allocation it sees
        return measure_in_fresh_process(w, device, steps=2)
    from turbo_ds.measure.probe import measure_core_step

    gc.collect()
    torch.cuda.empty_cache()
    try:
        return measure_core_step(w, device, steps=2)
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def search(preset: dict, setting: Setting, budget: int, deadline: float, log) -> tuple[int, list[dict]]:
    """Largest frame count (a multiple of the granularity) whose measured peak <= budget."""
    g, dev = preset["granularity"], preset["device"]
    probes: list[dict] = []

    def fits(frames: int) -> bool:
        if time.monotonic() > deadline:
            raise TimeoutError
        r = measure(workload(preset, setting, frames), dev)
        ok = not r.get("oom") and r["peak_bytes"] <= budget
        probes.append({"frames": frames, **r, "fits": ok})
        log(
            f"  {setting.name:<32} {frames:>6} frames: "
            + ("OOM" if r.get("oom") else f"{r['peak_mb']:9.1f} MiB")
            + (" fits" if ok else "")
        )
        return ok

    lo = preset["start_frames"]
    if not fits(lo):
        return 0, probes
    hi = lo * 2
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > g:  # lo fits, hi does not
        mid = (lo + hi) // 2 // g * g
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, probes


def predicted(w: Workload) -> int:
    counts = count_on_meta(lambda: build_model(w, torch.device("meta")))
    return plan(w, counts, StateSetup("torch", precision=w.precision)).total


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--budget-mb", type=float, default=None, help="memory budget (default: the preset's)")
    ap.add_argument("--settings", nargs="+", default=None, help="names of settings to run (default all)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG: measured peak vs frames per setting")
    ap.add_argument("--max-seconds", type=float, default=1e9, help="stop starting probes after this long")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    if preset["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_frames: preset needs CUDA, none available")
    budget = int((args.budget_mb or preset["budget_mb"]) * MiB)
    settings = [s for s in SETTINGS if args.settings is None or s.name in args.settings]
    deadline = time.monotonic() + args.max_seconds
    print(
        f"bench_frames: preset {args.preset}, budget {budget / MiB:.0f} MiB, {preset['device']}, {preset['precision']}",
        flush=True,
    )
    rows, all_probes = [], {}
    for s in settings:
        try:
            frames, probes = search(preset, s, budget, deadline, lambda m: print(m, flush=True))
        except TimeoutError:
            print(f"  {s.name}: stopped at --max-seconds", flush=True)
            break
        all_probes[s.name] = probes
        at = [p for p in probes if p["frames"] == frames]
        w = workload(preset, s, max(frames, preset["granularity"]))
        pred = predicted(w) if frames else 0
        meas = at[0]["peak_bytes"] if at else 0
        rows.append({
            "setting": s.name, "drop_ratio": s.drop_ratio, "checkpointing": s.checkpointing,
            "pmae_ratio": s.pmae_ratio, "max_frames": frames, "tokens": w.tokens if frames else 0,
            "kept_tokens": w.kept if frames else 0, "budget_mb": round(budget / MiB, 1),
            "measured_mb": round(meas / MiB, 2), "predicted_mb": round(pred / MiB, 2),
            "error_pct": round(100 * (pred / meas - 1), 2) if meas else None,
            "step_s": round(at[0]["step_s"], 3) if at else None,
        })  # fmt: skip
    base = next((r["max_frames"] for r in rows if r["setting"] == "dense"), 0)
    print(
        f"\n{'setting':<32} {'max frames':>10} {'x dense':>8} {'measured MiB':>13} {'predicted MiB':>14} {'error':>7}"
    )
    for r in rows:
        r["frames_vs_dense"] = round(r["max_frames"] / base, 2) if base else None
        err = f"{r['error_pct']:+.1f}%" if r["error_pct"] is not None else "-"
        ratio = f"{r['frames_vs_dense']:.1f}x" if r["frames_vs_dense"] else "-"
        print(
            f"{r['setting']:<32} {r['max_frames']:>10} {ratio:>8} {r['measured_mb']:>13.1f} {r['predicted_mb']:>14.1f} {err:>7}"
        )
    result = {
        "preset": args.preset, "device": preset["device"], "precision": preset["precision"],
        "model": preset["model"], "budget_mb": round(budget / MiB, 1), "torch": torch.__version__,
        "measurement": "profiler_memory_events" if preset["device"] == "cpu" else "cuda_max_memory_allocated",
        "rows": rows, "probes": all_probes,
    }  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
    return result


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_frames: matplotlib not installed, no plot", flush=True)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, probes in result["probes"].items():
        pts = sorted((p["frames"], p["peak_mb"]) for p in probes if not p.get("oom"))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.axhline(result["budget_mb"], color="k", ls="--", lw=1, label=f"budget {result['budget_mb']:.0f} MiB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("frames per clip (batch 1)")
    ax.set_ylabel("measured peak memory (MiB)")
    ax.set_title(f"Frames vs peak memory, one training step ({result['device']}, {result['precision']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"bench_frames: plot written to {path}", flush=True)


if __name__ == "__main__":
    main()
