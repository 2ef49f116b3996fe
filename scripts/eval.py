#!/usr/bin/env python
"""Evaluate a checkpoint or exported weights on a split (multi-view), print and log top-1/top-5.

python scripts/eval.py --weights runs/demo/export.pt --split val --clips 2 --crops 3
deepspeed --num_gpus 2 scripts/eval.py --checkpoint runs/demo/checkpoints --split val
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbo_ds.trainer import eval_main  # noqa: E402

if __name__ == "__main__":
    eval_main()
