"""The `python -m data_index` command line: build, merge, validate, stats, transcode, demo."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from data_index.builders import (
    CHUNK_SIZE,
    PARSERS,
    build,
    map_in_order,
    parse_shard,
    probe_stream,
)
from data_index.merge import merge
from data_index.parsers import DataIndexError
from turbo_ds.data.schema import errors_path_for, index_metadata, write_index


def cmd_build(a) -> int:
    shard = parse_shard(a.shard) if a.shard else (0, 1)
    built = build(
        a.format,
        a.annotations,
        a.root,
        a.out,
        workers=a.workers,
        split=a.split,
        labels=a.labels,
        shard=shard,
        chunk_size=a.chunk_size,
        work_dir=a.work_dir,
    )
    part = (
        f" (part {shard[0]}/{shard[1]}: merge the parts with `python -m data_index merge`)" if a.shard else ""
    )
    _report(a.out, built, part)
    return 0


def cmd_merge(a) -> int:
    _report(a.out, merge(a.parts, a.out), f" (merged from {len(a.parts)} parts)")
    return 0


def _report(out, built, note: str = "") -> None:
    """The summary line and the first 10 errors (read back from the errors table, not all of it)."""
    errors = errors_path_for(out)
    print(f"wrote {out}: {built.rows} videos; {built.errors} errors -> {errors}{note}")
    first = itertools.islice(_index_rows(errors, ["path", "reason"]), 10) if built.errors else ()
    for e in first:
        print(f"  {e['path']}: {e['reason']}")
    if built.errors > 10:
        print(f"  ... {built.errors - 10} more")


def _index_rows(index, columns: list[str]) -> Iterator[dict]:
    """Rows of ``columns``, one row group in memory at a time."""
    for batch in pq.ParquetFile(index).iter_batches(columns=columns):
        yield from batch.to_pylist()


def cmd_validate(a) -> int:
    """Every path exists and opens; frame counts re-checked. Exit 1 if anything is wrong."""
    root = Path(a.root) if a.root else Path(a.index).parent
    total = pq.ParquetFile(a.index).metadata.num_rows
    rows, rows_again = itertools.tee(_index_rows(a.index, ["video_id", "path", "num_frames"]))
    jobs = ((str(root / r["path"]), True) for r in rows)
    problems = []
    bar = tqdm(total=total, desc="validate", unit="video", disable=None)
    for r, (meta, reason, detail) in zip(rows_again, probe_stream(jobs, a.workers), strict=True):
        bar.update()
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
    bar.close()
    print(f"{a.index}: {total} videos checked, {len(problems)} problems")
    for p in problems[:20]:
        print(f"  {p['path']}: {p['reason']}")
    if a.errors_out:
        write_index([], a.errors_out, errors=problems)
        print(f"problems written to {errors_path_for(a.errors_out)}")
    return 1 if problems else 0


def index_stats(index: str) -> dict:
    """Counts and ranges over the index, one row group at a time (Arrow compute, no row objects)."""
    meta = index_metadata(index)
    n, splits, labels, res, alignable = 0, Counter(), Counter(), Counter(), Counter()
    frames, dur = [np.inf, 0.0, -np.inf], [np.inf, 0.0, -np.inf]  # min, sum, max
    segments = captions = 0
    for b in pq.ParquetFile(index).iter_batches():
        if not b.num_rows:
            continue
        n += b.num_rows
        for counter, col in ((splits, b["split"]), (labels, b["label"])):
            counter.update({x["values"]: x["counts"] for x in pc.value_counts(col).to_pylist()})
        for acc, col in ((frames, b["num_frames"]), (dur, b["duration_s"])):
            mm = pc.min_max(col).as_py()
            acc[0], acc[2] = min(acc[0], mm["min"] or 0), max(acc[2], mm["max"] or 0)
            acc[1] += pc.sum(col).as_py() or 0
        size = pc.binary_join_element_wise(pc.cast(b["width"], "string"), pc.cast(b["height"], "string"), "x")
        res.update({x["values"]: x["counts"] for x in pc.value_counts(size).to_pylist()})
        segments += pc.sum(pc.list_value_length(b["segments"])).as_py() or 0
        caps = pc.list_flatten(b["captions"])
        captions += len(caps)
        if caps.type.get_field_index("alignable") >= 0:  # schema 1.1: true / false / unknown (null)
            flags = pc.struct_field(caps, "alignable")
            alignable.update(
                {
                    "true": pc.sum(flags).as_py() or 0,
                    "false": len(flags) - flags.null_count - (pc.sum(flags).as_py() or 0),
                    "unknown": flags.null_count,
                }
            )
        else:
            alignable["unknown"] += len(caps)
    if not n:
        frames, dur = [0, 0.0, 0], [0.0, 0.0, 0.0]
    return {
        "index": str(index),
        "schema_version": meta["schema_version"],
        "info": meta["info"],
        "videos": n,
        "splits": dict(splits),
        "classes": len([k for k in labels if k is not None and k >= 0]),
        "labels": dict(sorted(labels.items())),
        "frames": {"min": int(frames[0]), "mean": frames[1] / max(n, 1), "max": int(frames[2])},
        "duration_s": {
            "min": float(dur[0]),
            "mean": dur[1] / max(n, 1),
            "max": float(dur[2]),
            "total_h": dur[1] / 3600,
        },
        "resolutions": dict(res.most_common(5)),
        "segments": segments,
        "captions": captions,
        "alignable": {k: v for k, v in alignable.items() if v},
        "errors": pq.ParquetFile(errors_path_for(index)).metadata.num_rows
        if errors_path_for(index).exists()
        else 0,
    }


def cmd_stats(a) -> int:
    s = index_stats(a.index)
    if a.json:
        print(json.dumps(s, indent=1))
        return 0
    for k, v in s.items():
        print(f"{k:>15}: {v}")
    return 0


def _transcode_one(job: tuple[str, str, int, int | None, int]) -> tuple[str, dict | None, str]:
    """Re-encode ``src`` to ``dst`` and probe the result: (what happened, probed metadata or None, why
    not). Written to a ``.part`` file renamed at the end, so a ``dst`` that exists is whole: a rerun
    after an interrupted transcode keeps it ("kept") instead of encoding it again."""
    import av

    from data_index.builders import _probe
    from data_index.videowrite import write_video
    from turbo_ds.data.decode import scaled_size

    src, dst, short_side, gop, crf = job
    done = "kept"
    if not os.path.exists(dst):
        part = str(Path(dst).with_suffix(".part" + Path(dst).suffix))  # the container still from .mp4
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
                write_video(part, frames, fps, gop=gop or max(1, int(round(fps))), crf=crf)
            os.replace(part, dst)
        except Exception as e:
            if os.path.exists(part):
                os.remove(part)
            return "failed", None, f"{type(e).__name__}: {e}"
        done = "encoded"
    meta, reason, detail = _probe((dst, True))
    return done, meta, "" if meta is not None else f"{reason}: {detail}"


def _claim_out_root(out_root: Path, options: dict) -> None:
    """Record the options in ``out_root/transcode.json``; a folder that holds a transcode with other
    options is refused, since kept outputs would mix two settings."""
    marker = out_root / "transcode.json"
    if marker.exists():
        before = json.loads(marker.read_text())
        if before != options:
            raise DataIndexError(
                f"{out_root} holds a transcode with other options ({before}, not {options}): "
                "use another --out-root, or delete it to start over"
            )
        return
    out_root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(options))


def cmd_transcode(a) -> int:
    """Re-encode every video to ``--short-side`` px with keyframes every ``--gop`` frames (h264 mp4).

    Streams the index CHUNK_SIZE rows at a time through a bounded pool (encode, then probe, in the same
    worker), so memory stays flat at any index size; outputs already there from an interrupted run
    are kept, so rerunning the command resumes it."""
    index = pq.ParquetFile(a.index)
    root = Path(a.root) if a.root else Path(a.index).parent
    out_root = Path(a.out_root)
    _claim_out_root(out_root, {"short_side": a.short_side, "gop": a.gop, "crf": a.crf})
    rows_in_flight: deque[tuple[dict, Path]] = deque()  # (row, output) of the jobs submitted, in order

    def jobs():
        for batch in index.iter_batches(batch_size=CHUNK_SIZE):  # rows as Python objects: a few at a time
            for r in batch.to_pylist():
                dst = out_root / Path(r["path"]).with_suffix(".mp4")
                dst.parent.mkdir(parents=True, exist_ok=True)
                rows_in_flight.append((r, dst))
                yield str(root / r["path"]), str(dst), a.short_side, a.gop, a.crf

    errors: list[dict] = []
    counts: Counter = Counter()

    def transcoded_rows():
        results = map_in_order(_transcode_one, jobs(), a.workers)  # 0: one per CPU, up to 8
        for done, meta, reason in tqdm(
            results, total=index.metadata.num_rows, desc="transcode", unit="video", disable=None
        ):
            r, dst = rows_in_flight.popleft()
            counts[done] += 1
            if meta is None:
                errors.append(
                    {"video_id": r["video_id"], "path": r["path"], "stage": "transcode", "reason": reason}
                )
                continue
            yield {**r, **meta, "path": os.path.relpath(dst, out_root)}

    out = Path(a.out) if a.out else out_root / Path(a.index).name
    # write_index takes the rows first, then the errors: the list is complete by the time it is read.
    write_index(
        transcoded_rows(),
        out,
        errors=errors,
        info={
            **index_metadata(a.index)["info"],
            "root": str(out_root),
            "transcoded": {"short_side": a.short_side, "gop": a.gop},
        },
    )
    n_ok = index.metadata.num_rows - len(errors)
    print(
        f"wrote {out}: {n_ok} videos under {out_root} ({counts['encoded']} encoded, {counts['kept']} kept from "
        f"an earlier run); {len(errors)} errors"
    )
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
    b.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="build part I (0-based) of N, for `merge` (a SLURM array)",
    )
    b.add_argument(
        "--work-dir", default=None, help="finished chunks + progress.json, for resuming (default: OUT.work)"
    )
    b.add_argument(
        "--chunk-size",
        type=int,
        default=CHUNK_SIZE,
        help="videos per chunk: resume and shard unit, one row group",
    )
    b.set_defaults(fn=cmd_build)

    m = sub.add_parser("merge", help="merge the parts of a sharded build (checked) into one index")
    m.add_argument("parts", nargs="+", help="PART.parquet files of `build --shard I/N`, one per shard")
    m.add_argument("--out", required=True, help="INDEX.parquet")
    m.set_defaults(fn=cmd_merge)

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
    try:
        return args.fn(args)
    except DataIndexError as e:  # bad input: one line, no traceback (exit 2, as argparse for usage)
        print(f"data_index: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
