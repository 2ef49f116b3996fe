"""A short bf16 training run of the model core (VideoViT + token dropout + Partial-MAE, AdamW) on
synthetic clips: does training work on this machine, how fast, how much memory. A check, not a benchmark.

    python scripts/gpu_train_check.py --json train_check.json      # ViT-B/16, 16 x 224^2, batch 8, CUDA
    python scripts/gpu_train_check.py --tiny --json /tmp/tc.json   # vit_debug on the CPU, seconds (tests)

Needs torch alone (no deepspeed, no YAML, no numpy), so it runs on a lent GPU machine that has only
its own PyTorch (scripts/gpu_check.sh, step e).

Task: `--classes` classes, each a fixed random smooth clip (a template); a sample is its class's
template plus Gaussian noise, a fresh batch every step. A ViT learns it in tens of steps, so the
classification loss must fall; the Partial-MAE target (normalised patches) is the template's patch plus
noise, so its loss falls too. Loss = cross-entropy + mae_weight * Partial-MAE loss.

Precision: `torch.autocast(bfloat16)` over forward and loss, with fp32 weights, gradients and AdamW
state (mixed precision). Not bf16 parameters: an AdamW update of lr 1e-4 on a weight of ~0.02 is
below bf16's resolution there (8 mantissa bits: steps of ~1e-4), so pure-bf16 weights need an fp32
master copy, which DeepSpeed's bf16 mode keeps and plain torch does not; autocast gives the same bf16
matmuls and attention with fp32 updates. `--precision fp32` turns autocast off.

Prints one line per step and a summary; writes JSON (config, environment, per-step losses and times,
median step time, peak CUDA memory, tokens/s, pass/fail with reasons). Exits 1 when a loss is not finite
or the loss did not fall (mean of the last quarter of the steps >= mean of the first quarter).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from turbo_ds.measure.core_step import build_core, core_workload, mixed_precision, train_step
from turbo_ds.models import model_config
from turbo_ds.models.flops import step_flops

GPU = dict(model="vit_base_patch16", frames=16, img_size=224, batch_size=8, steps=60, warmup=5)
TINY = dict(model="vit_debug", frames=4, img_size=32, batch_size=8, steps=30, warmup=3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="vit_debug on 4 x 32^2 clips, CPU by default")
    p.add_argument("--model", help=f"registered model (default {GPU['model']}, --tiny: {TINY['model']})")
    p.add_argument("--frames", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--warmup", type=int, help="linear lr warm-up steps; also left out of the step time")
    p.add_argument("--drop-ratio", type=float, default=0.75)
    p.add_argument("--pmae-ratio", type=float, default=0.25, help="0 turns Partial-MAE off")
    p.add_argument("--mae-weight", type=float, default=0.5)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.5, help="std of the noise added to the templates")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default 3e-4; --tiny: 1e-3)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--device", help="default: cuda when available (cpu with --tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else GPU).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.lr is None:
        args.lr = 1e-3 if args.tiny else 3e-4
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.steps < 4:
        p.error("--steps must be at least 4 (the loss trend compares the first and last quarter)")
    return args


def make_templates(classes: int, frames: int, img_size: int, gen: torch.Generator) -> torch.Tensor:
    """(classes, 3, T, H, W) smooth random clips of unit std: noise at 1/8 resolution, upsampled."""
    low = torch.randn(
        classes, 3, max(frames // 4, 1), max(img_size // 8, 1), max(img_size // 8, 1), generator=gen
    )
    up = F.interpolate(low, size=(frames, img_size, img_size), mode="trilinear", align_corners=False)
    return up / up.flatten(1).std(dim=1).view(-1, 1, 1, 1, 1)


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    return env


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    templates = make_templates(args.classes, args.frames, args.img_size, gen).to(device)
    vit = model_config(
        args.model, img_size=args.img_size, num_frames=args.frames, num_classes=args.classes,
        drop_ratio=args.drop_ratio,
    )  # fmt: skip
    workload = core_workload(vit, args.batch_size, args.pmae_ratio, device=device.type)
    model, opt = build_core(
        workload,
        device,
        lr=args.lr,
        weight_decay=0.05,
        fused=device.type == "cuda",
        mae_weight=args.mae_weight,
    )
    n_params = sum(p.numel() for p in model.parameters())
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    flops = step_flops(
        vit, (args.batch_size, 3, args.frames, args.img_size, args.img_size), args.drop_ratio,
        args.pmae_ratio if workload.decoder is not None else 0.0,
    )  # fmt: skip

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, args.classes, (args.batch_size,), device=device)
        video = templates[labels] + args.noise * torch.randn(
            args.batch_size, 3, args.frames, args.img_size, args.img_size, device=device
        )
        return video, labels

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = []
    print(f"{'step':>4} {'loss':>8} {'cls':>8} {'mae':>8} {'lr':>9} {'step_s':>8}")
    for i in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (i + 1) / max(args.warmup, 1))
        video, labels = batch()
        sync()
        start = time.perf_counter()
        losses = train_step(model, opt, video, labels, autocast=autocast, max_grad_norm=1.0)
        sync()
        dt = time.perf_counter() - start
        mae = losses.mae_loss.item() if losses.mae_loss is not None else None
        row = dict(
            step=i + 1, loss=losses.loss.item(), cls_loss=losses.cls_loss.item(), mae_loss=mae,
            grad_norm=float(losses.grad_norm), lr=opt.param_groups[0]["lr"], step_s=dt,
        )  # fmt: skip
        steps.append(row)
        mae_s = f"{mae:8.4f}" if mae is not None else f"{'-':>8}"
        print(
            f"{i + 1:>4} {row['loss']:8.4f} {row['cls_loss']:8.4f} {mae_s} {row['lr']:9.2e} {dt:8.4f}",
            flush=True,
        )

    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    # All tokens, no dropout: the accuracy on fresh clips (the eval path under the same precision).
    model.eval()
    with torch.no_grad(), mixed_precision(device.type, autocast):
        video, labels = batch()
        eval_acc = float((model(video).logits.argmax(-1) == labels).float().mean())

    timed = [r["step_s"] for r in steps[args.warmup :]] or [r["step_s"] for r in steps]
    step_s = statistics.median(timed)
    losses = [r["loss"] for r in steps]
    q = max(len(losses) // 4, 1)
    first, last = statistics.mean(losses[:q]), statistics.mean(losses[-q:])
    failures = []
    if not all(math.isfinite(x) for x in losses):
        failures.append("a loss is not finite")
    if not last < first:
        failures.append(f"loss did not fall: mean of the last {q} steps {last:.4f} >= first {q} {first:.4f}")
    tokens_total = workload.tokens
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "environment": environment(device),
        "params_m": n_params / 1e6,
        "tokens_kept_per_clip": flops.tokens_kept,
        "tokens_reconstructed_per_clip": flops.tokens_reconstructed,
        "tokens_per_clip": tokens_total,
        "train_gflops_per_step": flops.train / 1e9,
        "step_s_median": step_s,
        "clips_per_s": args.batch_size / step_s,
        "kept_tokens_per_s": args.batch_size * flops.tokens_kept / step_s,
        "achieved_tflops": flops.train / step_s / 1e12,
        "peak_cuda_mem_mb": peak_mb,
        "loss_first_quarter": first,
        "loss_last_quarter": last,
        "eval_acc_all_tokens": eval_acc,
        "passed": not failures,
        "failures": failures,
        "steps": steps,
    }
    return result


def print_summary(res: dict) -> None:
    c = res["config"]
    print(
        f"\n{c['model']} {c['frames']}x{c['img_size']}^2 batch {c['batch_size']}, drop {c['drop_ratio']}, "
        f"PMAE {c['pmae_ratio']}, {c['precision']} on {res['environment'].get('gpu', c['device'])} "
        f"(torch {res['environment']['torch']}, {res['params_m']:.1f} M params)"
    )
    peak = f"{res['peak_cuda_mem_mb']:.0f} MiB" if res["peak_cuda_mem_mb"] is not None else "- (CPU)"
    print(
        f"step {res['step_s_median'] * 1000:.1f} ms (median after warm-up), {res['clips_per_s']:.1f} clips/s, "
        f"{res['kept_tokens_per_s']:.0f} kept tokens/s, {res['achieved_tflops']:.2f} TFLOP/s (analytic), "
        f"peak CUDA memory {peak}"
    )
    print(
        f"loss {res['loss_first_quarter']:.4f} (first quarter) -> {res['loss_last_quarter']:.4f} (last quarter); "
        f"eval accuracy with all tokens {res['eval_acc_all_tokens'] * 100:.1f}% "
        f"(chance {100 / c['classes']:.1f}%)"
    )
    print("PASSED" if res["passed"] else "FAILED: " + "; ".join(res["failures"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print_summary(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
