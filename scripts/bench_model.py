"""Benchmark one training step (forward + backward + AdamW step) of VideoViT with token dropout,
Partial-MAE and activation checkpointing, dense vs Turbo: :mod:`turbo_ds.measure.bench_model`.

    python scripts/bench_model.py --preset cpu --json docs/bench_model.json
    python scripts/bench_model.py --preset gpu --json bench_gpu.json   # ViT-B/16, 16 x 224^2, bf16 autocast
    python scripts/bench_model.py --preset debug                       # seconds, CPU: the script itself

Needs torch alone (scripts/gpu_check.sh runs the gpu preset on a machine that has nothing else).
"""

from turbo_ds.measure.bench_model import main

if __name__ == "__main__":
    main()
