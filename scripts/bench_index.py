"""Index scale benchmark: HowTo100M-shaped indexes built and opened at a few sizes (data_index/bench.py).

    python scripts/bench_index.py --preset small --json /tmp/bench_index.json   # 200, 2k, 8k videos: ~2 min
    python scripts/bench_index.py --json docs/bench_index.json                    # full: 20k, 60k, 120k videos
    python scripts/bench_index.py --sizes 500,5000                                # any sizes

Every video is a symlink to one tiny clip; 110 captions per video by default. Each step runs in a fresh
process; the table ends with the extrapolation to HowTo100M (1.22M videos, 136M captions).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from data_index.bench import PRESETS, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", choices=sorted(PRESETS), help=f"sizes: {PRESETS}")
    p.add_argument("--sizes", default=None, help="videos per size, comma-separated (instead of --preset)")
    p.add_argument("--captions", type=int, default=110, help="captions per video")
    p.add_argument("--workers", type=int, default=0, help="probe processes of the build (0 = one per CPU)")
    p.add_argument("--dir", default=None, help="inputs and indexes (kept, reused); default: a temp folder")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()
    folder = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="bench_index_"))
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else PRESETS[a.preset]
    run(sizes, folder, captions=a.captions, workers=a.workers, json_out=a.json)


if __name__ == "__main__":
    main()
