#!/usr/bin/env python
"""Evaluate a checkpoint or exported weights of any task on a split, with all tokens; print the task's
summary, write eval_<split>_metrics.json and log an MLflow run.

python scripts/eval.py --weights runs/demo/export.pt --split val --clips 2 --crops 3      # classification
deepspeed --num_gpus 2 scripts/eval.py --checkpoint runs/demo/checkpoints --split val
python scripts/eval.py --checkpoint runs/demo_video_text/checkpoints --split test          # HTM-Align
python scripts/eval.py --checkpoint runs/demo_video_text/checkpoints --split val \
    --set data.index=other.parquet --set data.root=/videos                                 # retrieval
"""

import sys

from turbo_ds.cli import run_cli
from turbo_ds.loop.eval_cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
