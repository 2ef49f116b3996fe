#!/usr/bin/env python
"""Sweep: every combination of a grid of config values, each a scripts/train.py run, in one MLflow
experiment; a thin entry point over ``turbo_ds.sweep.cli.main``.

    python scripts/sweep.py --config configs/demo_classification.yaml --ds_config ds_configs/zero2.json \
        --num_gpus 2 --grid token_dropout.drop_ratio=0,0.5,0.75,0.9 [--grid pmae.enabled=true,false] \
        [--set train.max_steps=200 ...] [--name NAME] [--out runs/sweeps] [--dry-run]

Rerunning the same command skips the finished runs and resumes an interrupted one. Exit status 0 (all
finished), 1 (a run failed), 2 (a bad grid or config: one line, before any run starts), 75 (a run was
preempted or the sweep got SIGTERM / SIGUSR1: rerun it to resume), 130 (Ctrl-C). See docs/training.md.
"""

import sys

from turbo_ds.cli import run_cli
from turbo_ds.sweep.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
