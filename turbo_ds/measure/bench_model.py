"""Benchmark one training step (forward + backward + AdamW step) of VideoViT with token dropout,
Partial-MAE and activation checkpointing (:mod:`turbo_ds.measure.core_step`'s step): the logic of
``scripts/bench_model.py``. A benchmark, not a test.

Every configuration runs in a fresh subprocess (so its peak RSS is its own on CPU; on GPU the CUDA
allocator's peak is used). Rounds interleave the configurations, alternating their order, so that
load from other processes on a shared machine hits every configuration alike; the step time is the
median over all timed steps of all rounds.

    python scripts/bench_model.py --preset cpu --json docs/bench_model.json
    python scripts/bench_model.py --preset gpu --json bench_gpu.json   # ViT-B/16, 16 x 224^2, bf16 autocast
    python scripts/bench_model.py --preset debug                       # seconds, CPU: the script itself

Needs torch alone (no deepspeed, no YAML): scripts/gpu_check.sh runs the gpu preset on a machine that
has nothing else. ``--precision bf16`` runs forward and loss under ``torch.autocast(bfloat16)`` with
fp32 weights, gradients and AdamW state (mixed precision); ``--max-seconds`` stops starting new
configurations once that much time has passed, so a bounded run still reports what it measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    # CPU-sized: ViT-S/16 on 16 x 112^2 clips (8 x 7 x 7 = 392 tokens).
    "cpu": dict(
        models=["vit_small_patch16"], frames=16, img_size=112, batch_size=8, warmup=1, steps=3, rounds=2
    ),
    # The paper's setting on one GPU: ViT-B/16 on 16 x 224^2 clips (8 x 14 x 14 = 1568 tokens), bf16,
    # dense vs Turbo at every drop ratio, Partial-MAE off / 0.25, checkpointing off / all: 14 runs.
    "gpu": dict(
        models=["vit_base_patch16"],
        frames=16,
        img_size=224,
        batch_size=8,
        warmup=3,
        steps=10,
        rounds=1,
        pmae_ratios=[0.0, 0.25],
        precision="bf16",
    ),  # fmt: skip
    # Seconds-long smoke run of the script itself.
    "debug": dict(models=["vit_debug"], frames=4, img_size=32, batch_size=2, warmup=1, steps=2, rounds=1),
}
DROP_RATIOS = [0.0, 0.5, 0.75, 0.9]
PMAE_RATIOS = [0.0, 0.25, 1.0]  # 0 = Partial-MAE off
CHECKPOINTING = ["off", "all"]
PRECISIONS = ["fp32", "bf16"]
# Options a preset may leave out: the grid and fp32.
DEFAULTS = dict(drop_ratios=DROP_RATIOS, pmae_ratios=PMAE_RATIOS, ckpt=CHECKPOINTING, precision="fp32")


def run_config(cfg: dict) -> dict:
    """Build the model and optimizer, time `steps` steps after `warmup`, and measure peak memory."""
    import torch

    from turbo_ds.measure.core_step import build_core, core_workload, mixed_precision, train_step
    from turbo_ds.models import model_config

    torch.manual_seed(0)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    vit = model_config(
        cfg["model"], img_size=cfg["img_size"], num_frames=cfg["frames"], num_classes=400,
        drop_ratio=cfg["drop_ratio"], pos_embed="learned",
    )  # fmt: skip
    workload = core_workload(
        vit, cfg["batch_size"], cfg["pmae_ratio"], cfg["checkpointing"] == "all", device=device.type
    )
    model, opt = build_core(workload, device, lr=1e-4, weight_decay=0.05, fused=True)
    video = torch.randn(cfg["batch_size"], 3, cfg["frames"], cfg["img_size"], cfg["img_size"], device=device)
    labels = torch.randint(0, 400, (cfg["batch_size"],), device=device)

    # bf16: autocast over forward and loss; weights, gradients and AdamW state stay fp32.
    autocast = torch.bfloat16 if cfg.get("precision", "fp32") == "bf16" else None

    def step() -> None:
        train_step(model, opt, video, labels, autocast=autocast)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Allocate gradients and AdamW state with a zero learning rate, so that the baseline memory
    # (weights + grads + optimizer) is known before any activation is stored.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    for group in opt.param_groups:
        group["lr"] = 1e-4
    sync()
    base = rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated() / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    for _ in range(cfg["warmup"]):
        step()
    sync()
    times, cpu_times = [], []
    for _ in range(cfg["steps"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = max_rss_mb() if device.type == "cpu" else torch.cuda.max_memory_allocated() / 2**20
    with mixed_precision(device.type, autocast):
        saved = saved_activations_mb(model, video) if cfg["checkpointing"] == "off" else None
    return {
        "step_times": times, "cpu_times": cpu_times, "peak_mem_mb": peak, "base_mem_mb": base,
        "saved_mb": saved,
    }  # fmt: skip


def saved_activations_mb(model, video) -> float:
    """MB of distinct non-parameter tensors autograd saves for backward in one forward: the activation
    memory, exactly and independent of allocator and machine load (autocast's bf16 copies of the
    weights are left out too). (Not used for checkpointed rows: checkpointing hides its saved tensors
    from outer hooks.)"""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def is_param_cast(t: torch.Tensor) -> bool:
        """A weight cast by autocast (bf16 copy of a parameter, or a view of one such as the transpose a
        linear layer saves): model state, not an activation."""
        fn = (t._base if t._base is not None else t).grad_fn
        if fn is None or type(fn).__name__ != "ToCopyBackward0" or not fn.next_functions:
            return False
        src = getattr(fn.next_functions[0][0], "variable", None)
        return src is not None and src.untyped_storage().data_ptr() in params

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and not is_param_cast(t):
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(video)
    del out
    return sum(seen.values()) / 2**20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def spawn(cfg: dict) -> dict:
    cmd = [sys.executable, "-m", "turbo_ds.measure.bench_model", "--worker", json.dumps(cfg)]
    # Passive OpenMP waiting: on a CPU shared with other jobs, spinning threads steal the core from the
    # thread they wait for, and small ops get ~100x slower (see docs/benchmarks.md). Set it to override.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"config {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def configs(args: argparse.Namespace) -> list[dict]:
    out = []
    for model, drop, pmae, ckpt in itertools.product(
        args.models, args.drop_ratios, args.pmae_ratios, args.ckpt
    ):
        if drop == 0.0 and pmae > 0:
            continue  # nothing dropped, nothing to reconstruct: identical to the dense row
        out.append(
            dict(
                model=model,
                frames=args.frames,
                img_size=args.img_size,
                batch_size=args.batch_size,
                drop_ratio=drop,
                pmae_ratio=pmae,
                checkpointing=ckpt,
                device=args.device,
                precision=args.precision,
                warmup=args.warmup,
                steps=args.steps,
                threads=args.threads,
            )  # fmt: skip
        )
    return out


def add_analysis(rows: list[dict]) -> list[dict]:
    """FLOPs and the ratios against the dense run without checkpointing of the same model and size;
    returns the rows that have such a dense run (all of them unless --max-seconds cut it)."""
    from turbo_ds.models import model_config
    from turbo_ds.models.flops import step_flops

    for row in rows:
        cfg = model_config(row["model"], img_size=row["img_size"], num_frames=row["frames"], num_classes=400)
        ckpt_blocks = cfg.depth if row["checkpointing"] == "all" else 0
        shape = (row["batch_size"], 3, row["frames"], row["img_size"], row["img_size"])
        flops = step_flops(cfg, shape, row["drop_ratio"], row["pmae_ratio"], checkpoint_blocks=ckpt_blocks)
        row["gflops"] = flops.train / 1e9
        row["tokens_kept"], row["tokens_reconstructed"] = flops.tokens_kept, flops.tokens_reconstructed
    out = []
    for row in rows:
        dense = next(
            (r for r in rows
             if (r["model"], r["frames"], r["img_size"]) == (row["model"], row["frames"], row["img_size"])
             and r["drop_ratio"] == 0 and r["checkpointing"] == "off"),
            None,
        )  # fmt: skip
        if dense is None:
            continue
        out.append(row)
        row["speedup"] = dense["step_s"] / row["step_s"]
        row["flop_ratio"] = dense["gflops"] / row["gflops"]
        row["flop_efficiency"] = row["speedup"] / row["flop_ratio"]
        row["cpu_speedup"] = dense["cpu_s"] / row["cpu_s"]
        row["mem_ratio"] = row["peak_mem_mb"] / dense["peak_mem_mb"]
        row["saved_ratio"] = row["saved_mb"] / dense["saved_mb"] if row.get("saved_mb") is not None else None
        act, dense_act = row["peak_mem_mb"] - row["base_mem_mb"], dense["peak_mem_mb"] - dense["base_mem_mb"]
        row["act_mem_ratio"] = act / dense_act
    return out


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':<18} {'T':>3} {'img':>4} {'drop':>5} {'pmae':>5} {'ckpt':>4} {'step_s':>7} {'speedup':>7} "
        f"{'cpu_x':>6} {'GFLOPs':>7} {'flop_x':>6} {'eff':>5} {'peak_MB':>7} {'mem':>5} {'act':>5} {'saved':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        saved = f"{r['saved_ratio']:.2f}" if r.get("saved_ratio") is not None else "-"
        print(
            f"{r['model']:<18} {r['frames']:>3} {r['img_size']:>4} {r['drop_ratio']:>5.2f} {r['pmae_ratio']:>5.2f} "
            f"{r['checkpointing']:>4} {r['step_s']:>7.3f} {r['speedup']:>6.2f}x {r['cpu_speedup']:>5.2f}x "
            f"{r['gflops']:>7.1f} {r['flop_ratio']:>5.2f}x {r['flop_efficiency']:>5.2f} {r['peak_mem_mb']:>7.0f} "
            f"{r['mem_ratio']:>5.2f} {r['act_mem_ratio']:>5.2f} {saved:>5}"
        )
    print(
        "speedup: dense step_s / step_s; cpu_x: the same on process CPU time; flop_x: FLOP ratio; "
        "eff: speedup / flop_x;\nmem: peak memory / dense; act: (peak - baseline after weights, grads and "
        "AdamW state) / dense; saved: tensors saved for backward / dense"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_model.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, help="passes over all configurations, order alternating")
    parser.add_argument("--drop-ratios", type=float, nargs="+", help=f"default {DROP_RATIOS}")
    parser.add_argument("--pmae-ratios", type=float, nargs="+", help=f"default {PMAE_RATIOS} (0 = off)")
    parser.add_argument("--ckpt", nargs="+", choices=CHECKPOINTING, help="default: both")
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="fp32, or bf16 autocast with fp32 weights (gpu preset: bf16)"
    )
    parser.add_argument(
        "--max-seconds", type=float, help="start no new configuration after this many seconds (rows kept)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the preset's device)")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in {**DEFAULTS, **PRESETS[args.preset]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cuda" if args.preset == "gpu" else "cpu"
    if 0.0 not in args.drop_ratios or "off" not in args.ckpt:
        parser.error("the dense baseline (drop ratio 0, --ckpt off) is needed for the ratios")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_config(json.loads(args.worker))))
        return []
    todo = configs(args)
    results: dict[int, list[dict]] = {i: [] for i in range(len(todo))}
    start = time.perf_counter()
    for rnd in range(args.rounds):
        order = list(range(len(todo)))[:: 1 if rnd % 2 == 0 else -1]
        for i in order:
            if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
                print(
                    f"[bench_model] --max-seconds {args.max_seconds:g} reached: {todo[i]} not run",
                    file=sys.stderr,
                )
                continue
            res = spawn(todo[i])
            results[i].append(res)
            c = todo[i]
            print(
                f"[round {rnd + 1}/{args.rounds}] {c['model']} drop={c['drop_ratio']} pmae={c['pmae_ratio']} "
                f"ckpt={c['checkpointing']}: {statistics.median(res['step_times']):.3f}s "
                f"peak {res['peak_mem_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for i, cfg in enumerate(todo):
        if not results[i]:
            continue  # not run (--max-seconds)
        times = [t for res in results[i] for t in res["step_times"]]
        cpu_times = [t for res in results[i] for t in res["cpu_times"]]
        row = {
            k: cfg[k] for k in ("model", "frames", "img_size", "drop_ratio", "pmae_ratio", "checkpointing")
        }
        row.update(
            step_s=statistics.median(times),
            cpu_s=statistics.median(cpu_times),
            saved_mb=results[i][0]["saved_mb"],
            peak_mem_mb=statistics.median(r["peak_mem_mb"] for r in results[i]),
            base_mem_mb=statistics.median(r["base_mem_mb"] for r in results[i]),
            batch_size=cfg["batch_size"],
            device=cfg["device"],
            precision=cfg["precision"],
            threads=cfg["threads"] or None,
            step_times=times,
        )
        rows.append(row)
    rows = add_analysis(rows)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
