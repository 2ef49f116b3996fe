"""Peak memory of an HTM-Align alignment evaluation against video length: seconds embedded in chunks
(``task.align_chunk_seconds``) against every second in one forward, each measured in a fresh process
(``turbo_ds.measure.align``: resident set during the evaluation, decoding included). Writes long
synthetic narrated videos and their HTM-Align indexes first (``data_index.demo.generate_long_align``).
A benchmark, not a test.

    python scripts/bench_align_memory.py --json docs/bench_align_memory.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_config(index: Path, chunk_seconds: int, img_size: int, out_dir: Path) -> dict:
    """The demo video-text model (4 blocks, width 64) at ``img_size``, 8-frame clips: alignment only."""
    return {
        "output_dir": str(out_dir),
        "model": {
            "name": "vit_debug",
            "overrides": {"embed_dim": 64, "depth": 4, "num_heads": 4, "patch_size": 8, "pool": "mean"},
        },
        "data": {
            "index": str(index),
            "num_frames": 8,
            "frame_stride": 2,
            "img_size": img_size,
            "num_workers": 0,
        },
        "task": {
            "name": "video_text",
            "text_model": "turbo-tiny",
            "context_length": 16,
            "retrieval_split": None,
            "align_index": str(index),
            "align_chunk_seconds": chunk_seconds,
        },
        "tracking": {"enabled": False},
        "train": {"progress_bar": False},
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, nargs="+", default=[30, 120, 480], help="video lengths")
    ap.add_argument("--chunk-seconds", type=int, default=30, help="align_chunk_seconds of the chunked rows")
    ap.add_argument("--img-size", type=int, default=64, help="frame size (64: 256 tokens per clip)")
    ap.add_argument("--work", default=None, help="where the videos go (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)

    tmp = (
        contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="bench_align_")
    )
    with tmp as work:
        rows = run(Path(work), args.seconds, args.chunk_seconds, args.img_size)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    return rows


def run(work: Path, seconds: list[int], chunk_seconds: int, img_size: int) -> list[dict]:
    """Write the videos under ``work``, measure every (length, mode), print the table; the rows."""
    from data_index.demo import generate_long_align
    from turbo_ds.measure.align import measure_alignment

    indexes = generate_long_align(work / "data", seconds, size=img_size)
    rows = []
    print(
        f"{'video s':>8} {'mode':>12} {'items':>6} {'RSS before MiB':>15} {'peak RSS MiB':>13} "
        f"{'growth MiB':>11} {'R@1':>6}"
    )
    for length in seconds:
        for mode, chunk in (("chunked", chunk_seconds), ("one forward", length)):
            cfg = bench_config(indexes[length], chunk, img_size, work / "out")
            m = measure_alignment(cfg)
            row = {
                "video_s": length,
                "mode": mode,
                "chunk_seconds": chunk,
                "items": m["items"],
                "rss_before_mb": round(m["rss_before_mb"], 1),
                "peak_rss_mb": round(m["peak_rss_mb"], 1),
                "growth_mb": round(m["peak_rss_mb"] - m["rss_before_mb"], 1),
                "peak_is_evaluation_only": m["peak_is_evaluation_only"],
                "eval_s": round(m["eval_s"], 2),
                "align_r1": m["metrics"]["align/align_r1"],  # the same in both modes
            }
            rows.append(row)
            print(
                f"{length:>8} {mode:>12} {row['items']:>6} {row['rss_before_mb']:>15.1f} "
                f"{row['peak_rss_mb']:>13.1f} {row['growth_mb']:>11.1f} {row['align_r1']:>6.1f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
