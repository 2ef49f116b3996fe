"""The `python -m data_index` command line: build, validate, stats, transcode, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from data_index.builders import PARSERS, build, probe_many
from turbo_ds.data.schema import errors_path_for, index_metadata, read_errors, write_index


def cmd_build(a) -> int:
    n, errors = build(
        a.format, a.annotations, a.root, a.out, workers=a.workers, split=a.split, labels=a.labels
    )
    print(f"wrote {a.out}: {n} videos; {len(errors)} errors -> {errors_path_for(a.out)}")
    for e in errors[:10]:
        print(f"  {e['path']}: {e['reason']}")
    if len(errors) > 10:
        print(f"  ... {len(errors) - 10} more")
    return 0


def cmd_validate(a) -> int:
    """Every path exists and opens; frame counts re-checked. Exit 1 if anything is wrong."""
    table = pq.read_table(a.index)
    rows = table.to_pylist()
    root = Path(a.root) if a.root else Path(a.index).parent
    results = probe_many([str(root / r["path"]) for r in rows], workers=a.workers, desc="validate")
    problems = []
    for r, (meta, reason, detail) in zip(rows, results, strict=True):
        if meta is None:
            problems.append(
                {
                    "video_id": r["video_id"],
                    "path": r["path"],
                    "stage": "validate",
                    "reason": f"{reason}: {detail}".rstrip(": "),
                }
            )
        elif meta["num_frames"] != r["num_frames"]:
            problems.append(
                {
                    "video_id": r["video_id"],
                    "path": r["path"],
                    "stage": "validate",
                    "reason": f"frame count {r['num_frames']} in index, {meta['num_frames']} decode",
                }
            )
    print(f"{a.index}: {len(rows)} videos checked, {len(problems)} problems")
    for p in problems[:20]:
        print(f"  {p['path']}: {p['reason']}")
    if a.errors_out:
        write_index([], a.errors_out, errors=problems)
        print(f"problems written to {errors_path_for(a.errors_out)}")
    return 1 if problems else 0


def index_stats(index: str) -> dict:
    t = pq.read_table(index).to_pylist()
    meta = index_metadata(index)
    frames = np.array([r["num_frames"] for r in t]) if t else np.zeros(1)
    dur = np.array([r["duration_s"] for r in t]) if t else np.zeros(1)
    return {
        "index": str(index),
        "schema_version": meta["schema_version"],
        "info": meta["info"],
        "videos": len(t),
        "splits": dict(Counter(r["split"] for r in t)),
        "classes": len({r["label"] for r in t if r["label"] >= 0}),
        "labels": dict(sorted(Counter(r["label"] for r in t).items())),
        "frames": {"min": int(frames.min()), "mean": float(frames.mean()), "max": int(frames.max())},
        "duration_s": {
            "min": float(dur.min()),
            "mean": float(dur.mean()),
            "max": float(dur.max()),
            "total_h": float(dur.sum() / 3600),
        },
        "resolutions": dict(Counter(f"{r['width']}x{r['height']}" for r in t).most_common(5)),
        "segments": sum(len(r["segments"] or []) for r in t),
        "captions": sum(len(r["captions"] or []) for r in t),
        "alignable": dict(  # captions by schema-1.1 flag: true / false / unknown (null, or a 1.0 index)
            Counter(
                {True: "true", False: "false"}.get(c.get("alignable"), "unknown")
                for r in t
                for c in r["captions"] or []
            )
        ),
        "errors": len(read_errors(index)),
    }


def cmd_stats(a) -> int:
    s = index_stats(a.index)
    if a.json:
        print(json.dumps(s, indent=1))
        return 0
    for k, v in s.items():
        print(f"{k:>15}: {v}")
    return 0


def _transcode_one(job: tuple[str, str, int, int | None, int]) -> tuple[str, str]:
    import av

    from data_index.videowrite import write_video
    from turbo_ds.data.decode import scaled_size

    src, dst, short_side, gop, crf = job
    try:
        with av.open(src) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            fps = float(s.average_rate or 25)
            w, h = scaled_size(s.codec_context.width, s.codec_context.height, short_side)
            if min(s.codec_context.width, s.codec_context.height) <= short_side:
                w, h = scaled_size(s.codec_context.width, s.codec_context.height, None)
                w, h = w - w % 2, h - h % 2
            frames = (f.to_ndarray(format="rgb24", width=w, height=h) for f in c.decode(s))
            write_video(dst, frames, fps, gop=gop or max(1, int(round(fps))), crf=crf)
        return dst, ""
    except Exception as e:
        return dst, f"{type(e).__name__}: {e}"


def cmd_transcode(a) -> int:
    """Re-encode every video to ``--short-side`` px with keyframes every ``--gop`` frames (h264 mp4)."""
    rows = pq.read_table(a.index).to_pylist()
    root = Path(a.root) if a.root else Path(a.index).parent
    out_root = Path(a.out_root)
    jobs = []
    for r in rows:
        rel = str(Path(r["path"]).with_suffix(".mp4"))
        jobs.append((str(root / r["path"]), str(out_root / rel), a.short_side, a.gop, a.crf))
    workers = a.workers or min(8, os.cpu_count() or 1)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        results = list(
            tqdm(
                pool.map(_transcode_one, jobs), total=len(jobs), desc="transcode", unit="video", disable=None
            )
        )
    ok_rows, errors = [], []
    done = [(r, j) for r, j, (_, err) in zip(rows, jobs, results, strict=True) if not err]
    for r, _j, (_, err) in zip(rows, jobs, results, strict=True):
        if err:
            errors.append({"video_id": r["video_id"], "path": r["path"], "stage": "transcode", "reason": err})
    probed = probe_many([j[1] for _, j in done], workers=workers, desc="probe")
    for (r, j), (meta, reason, detail) in zip(done, probed, strict=True):
        if meta is None:
            errors.append(
                {
                    "video_id": r["video_id"],
                    "path": r["path"],
                    "stage": "transcode",
                    "reason": f"{reason}: {detail}",
                }
            )
            continue
        ok_rows.append({**r, **meta, "path": os.path.relpath(j[1], out_root)})
    out = Path(a.out) if a.out else out_root / Path(a.index).name
    write_index(
        ok_rows,
        out,
        errors=errors,
        info={
            **index_metadata(a.index)["info"],
            "root": str(out_root),
            "transcoded": {"short_side": a.short_side, "gop": a.gop},
        },
    )
    print(f"wrote {out}: {len(ok_rows)} videos under {out_root}; {len(errors)} errors")
    return 0


def cmd_demo(a) -> int:
    from data_index.demo import describe, generate_demo

    generate_demo(a.out, seed=a.seed, size=a.size, workers=a.workers)
    print(describe(a.out, a.size))
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_index", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="annotations + videos -> Parquet index (+ errors table)")
    b.add_argument("--format", required=True, choices=sorted(PARSERS))
    b.add_argument(
        "--annotations", required=True, nargs="+", help="annotation file(s) (breakfast: files or folders)"
    )
    b.add_argument("--root", required=True, help="video root; index paths are relative to it")
    b.add_argument("--out", required=True, help="INDEX.parquet")
    b.add_argument("--workers", type=int, default=0, help="probe processes (0 = one per CPU, max 8)")
    b.add_argument("--split", default=None, help="force this split for every row")
    b.add_argument("--labels", default=None, help="ssv2: something-something-v2-labels.json")
    b.set_defaults(fn=cmd_build)

    v = sub.add_parser("validate", help="every path exists and opens; frame counts re-checked")
    v.add_argument("index")
    v.add_argument("--root", default=None, help="video root (default: the index's folder)")
    v.add_argument("--workers", type=int, default=0)
    v.add_argument("--errors-out", default=None, help="write the problems as an errors table")
    v.set_defaults(fn=cmd_validate)

    s = sub.add_parser("stats", help="counts per split/label, frames, durations, sizes")
    s.add_argument("index")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)

    t = sub.add_parser("transcode", help="re-encode to a training-friendly size and keyframe interval")
    t.add_argument("index")
    t.add_argument("--root", default=None)
    t.add_argument("--out-root", required=True)
    t.add_argument("--out", default=None, help="new index (default: OUT_ROOT/<index name>)")
    t.add_argument("--short-side", type=int, default=256)
    t.add_argument("--gop", type=int, default=None, help="keyframe interval in frames (default: 1 s)")
    t.add_argument("--crf", type=int, default=23)
    t.add_argument("--workers", type=int, default=0)
    t.set_defaults(fn=cmd_transcode)

    d = sub.add_parser("demo", help="generate the embedded demo dataset")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", default="default", choices=["default", "tiny"])
    d.add_argument("--workers", type=int, default=0)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
