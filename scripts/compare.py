#!/usr/bin/env python
"""Compare turbo_ds runs in MLflow against a baseline: print the table, write report.html, compare.csv
and PNG plots (docs/compare.md). Needs mlflow and matplotlib only (no torch).

python scripts/compare.py --experiment demo --out runs/compare
python scripts/compare.py --runs-dir runs/sweep --baseline drop0 --out runs/compare_sweep
"""

import sys

from turbo_ds.cli import run_cli
from turbo_ds.compare.main import main

if __name__ == "__main__":
    sys.exit(run_cli(main, process_group=False))
