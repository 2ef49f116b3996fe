#!/usr/bin/env python
"""Train with DeepSpeed: a thin entry point over ``turbo_ds.loop.train_cli.main``.

    deepspeed --num_gpus 2 scripts/train.py --ds_config ds_configs/zero2.json \
        --config configs/demo_classification.yaml [--set optim.lr=1e-3 ...] [--resume latest]
    torchrun --nproc_per_node 2 scripts/train.py ...      # same flags
    python scripts/train.py ...                           # one process
    srun python scripts/train.py ...                      # SLURM: see scripts/slurm/train.sbatch

Rank and world size come from the launcher's environment (or SLURM's, in an srun task). Exit status 0,
2 for a config or input error (one line on stderr; --debug adds the traceback), 1 otherwise. See
docs/training.md.
"""

import sys

from turbo_ds.cli import run_cli
from turbo_ds.loop.train_cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
