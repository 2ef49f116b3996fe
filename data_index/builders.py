"""Annotation parsers (one per dataset format) and the shared index builder.

A parser turns annotation files into *records* (video_id, path relative to root, split, label,
label_name, segments, captions); ``build_index`` probes every video in parallel processes and writes
the Parquet index plus the errors table (videos missing or unreadable, with the reason).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from turbo_ds.data.decode import DecodeError, probe_video
from turbo_ds.data.schema import write_index

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")


# ----------------------------------------------------------------------------- helpers


def find_videos(root: str | os.PathLike) -> dict[str, str]:
    """Map file stem (name without extension) -> path relative to ``root``, walking it once."""
    root = Path(root)
    out: dict[str, str] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTS:
                out.setdefault(stem, os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _label_map(names) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(set(names)))}


def _is_int(x: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", str(x).strip()))


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [
            {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def _resolve(videos: dict[str, str], *candidates: str) -> str | None:
    for c in candidates:
        if c in videos:
            return videos[c]
    return None


# ----------------------------------------------------------------------------- parsers


def parse_csv(files: Sequence[str], root, split: str | None = None) -> list[dict]:
    """``path,label`` header (+ optional ``split``, ``label_name``, ``video_id``). Labels are ints,
    or names mapped to ids in sorted order."""
    rows = [r for f in files for r in _read_csv(f)]
    if rows and not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"csv annotations need a header with at least path,label; got {list(rows[0])}")
    names = [r["label"] for r in rows if r.get("label") not in (None, "")]
    int_labels = all(_is_int(x) for x in names)
    lmap = {} if int_labels else _label_map(names)
    out = []
    for r in rows:
        lab = r.get("label")
        if lab in (None, ""):
            label, lname = -1, None
        elif int_labels:
            label, lname = int(lab), r.get("label_name") or None
        else:
            label, lname = lmap[lab], lab
        out.append(
            {
                "video_id": r.get("video_id") or Path(r["path"]).stem,
                "path": r["path"],
                "split": r.get("split") or split or "train",
                "label": label,
                "label_name": lname,
            }
        )
    return out


def parse_kinetics(files: Sequence[str], root, split: str | None = None) -> list[dict]:
    """Official Kinetics CSVs (label, youtube_id, time_start, time_end, split). Files are found by
    stem ``{youtube_id}_{start:06d}_{end:06d}`` or ``{youtube_id}`` anywhere under root."""
    rows = [r for f in files for r in _read_csv(f)]
    lmap = _label_map(r["label"] for r in rows if r.get("label"))
    videos = find_videos(root)
    out = []
    for r in rows:
        yid, ts, te = r["youtube_id"], int(float(r["time_start"])), int(float(r["time_end"]))
        stem = f"{yid}_{ts:06d}_{te:06d}"
        sp = split or r.get("split") or "train"
        sp = {"validate": "val", "validation": "val"}.get(sp, sp)
        out.append(
            {
                "video_id": stem,
                "path": _resolve(videos, stem, yid) or f"{stem}.mp4",
                "split": sp,
                "label": lmap[r["label"]] if r.get("label") else -1,
                "label_name": r.get("label") or None,
            }
        )
    return out


def parse_ssv2(files: Sequence[str], root, split: str | None = None, labels: str | None = None) -> list[dict]:
    """Something-Something v2: the JSON annotation lists (id, template, ...) + the labels JSON
    (template without brackets -> id). Split from ``split`` or the file name (train/validation/test)."""
    if not labels:
        raise ValueError("ssv2 needs --labels (something-something-v2-labels.json)")
    with open(labels) as f:
        lmap = {k: int(v) for k, v in json.load(f).items()}
    videos = find_videos(root)
    out = []
    for fname in files:
        sp = split
        if sp is None:
            low = Path(fname).name.lower()
            sp = "val" if "valid" in low else "test" if "test" in low else "train"
        with open(fname) as f:
            items = json.load(f)
        for it in items:
            vid = str(it["id"])
            tmpl = it.get("template")
            name = tmpl.replace("[", "").replace("]", "") if tmpl else None
            if name is not None and name not in lmap:
                raise ValueError(f"{fname}: template {name!r} (video {vid}) not in {labels}")
            out.append(
                {
                    "video_id": vid,
                    "path": _resolve(videos, vid) or f"{vid}.webm",
                    "split": sp,
                    "label": lmap[name] if name is not None else -1,
                    "label_name": name,
                }
            )
    return out


def parse_howto100m(files: Sequence[str], root, split: str | None = None) -> list[dict]:
    """HowTo100M captions: ``caption.json`` ({video_id: {start: [...], end: [...], text: [...]}}) or a
    CSV with video_id,start,end,text (+ optional split) rows, one per caption."""
    caps: dict[str, list[dict]] = {}
    splits: dict[str, str] = {}
    for fname in files:
        if str(fname).endswith(".json"):
            with open(fname) as f:
                data = json.load(f)
            for vid, c in data.items():
                caps.setdefault(vid, []).extend(
                    {"start_s": float(s), "end_s": float(e), "text": str(t)}
                    for s, e, t in zip(c["start"], c["end"], c["text"], strict=True)
                )
        else:
            for r in _read_csv(fname):
                caps.setdefault(r["video_id"], []).append(
                    {"start_s": float(r["start"]), "end_s": float(r["end"]), "text": r["text"]}
                )
                if r.get("split"):
                    splits[r["video_id"]] = r["split"]
    videos = find_videos(root)
    return [
        {
            "video_id": vid,
            "path": _resolve(videos, vid) or f"{vid}.mp4",
            "split": split or splits.get(vid, "train"),
            "label": -1,
            "label_name": None,
            "captions": sorted(c, key=lambda x: x["start_s"]),
        }
        for vid, c in caps.items()
    ]


def parse_htm_align(files: Sequence[str], root, split: str | None = None) -> list[dict]:
    """HTM-Align (Han, Xie, Zisserman, CVPR 2022): JSON ``{video_id: [[alignable 0|1, start_s, end_s,
    text], ...]}``. Label -1, split "test" unless ``split``; captions sorted by start with their
    ``alignable`` flag. Sentences starting at or after the end of their video are dropped at build time
    and reported in the errors table (stage "captions")."""
    out = []
    for fname in files:
        with open(fname) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(
                f"{fname}: htm_align annotations are {{video_id: [[alignable, start, end, text]]}}"
            )
        for vid, sentences in data.items():
            caps = []
            for i, s in enumerate(sentences):
                if len(s) != 4:
                    raise ValueError(
                        f"{fname}: video {vid} sentence {i}: expected [alignable, start_s, end_s, text], got {s!r}"
                    )
                flag, start, end, text = s
                caps.append(
                    {
                        "start_s": float(start),
                        "end_s": float(end),
                        "text": str(text),
                        "alignable": bool(int(flag)),
                        "ann_index": i,  # position in the annotation file, for error reports
                    }
                )
            out.append(
                {
                    "video_id": str(vid),
                    "path": f"{vid}.mp4",  # resolved below
                    "split": split or "test",
                    "label": -1,
                    "label_name": None,
                    "captions": sorted(caps, key=lambda x: (x["start_s"], x["ann_index"])),
                    "drop_late_captions": True,
                }
            )
    videos = find_videos(root)
    for rec in out:
        rec["path"] = _resolve(videos, rec["video_id"]) or rec["path"]
    return out


def _drop_late_captions(row: dict) -> list[dict]:
    """Remove captions that start at or after the video's end; returns errors-table entries for them."""
    dur = float(row["duration_s"])
    kept, errors = [], []
    for pos, c in enumerate(row.get("captions") or []):
        if c["start_s"] >= dur:
            i = c.get("ann_index", pos)
            errors.append(
                {
                    "video_id": row["video_id"],
                    "path": row["path"],
                    "stage": "captions",
                    "reason": (
                        f"sentence {i} ({c['start_s']:.3f}-{c['end_s']:.3f} s) starts at or after "
                        f"the end of the video ({dur:.3f} s): dropped"
                    ),
                }
            )
        else:
            kept.append(c)
    row["captions"] = kept
    return errors


BREAKFAST_TEST_S1 = {f"P{i:02d}" for i in range(3, 16)}


def _breakfast_segments(path: Path) -> list[tuple[int, int, str]]:
    """Segment file lines ``start-end label`` (1-based frames, inclusive) or one label per frame."""
    lines = [x.strip() for x in path.read_text().splitlines() if x.strip()]
    segs: list[tuple[int, int, str]] = []
    if lines and re.fullmatch(r"\d+-\d+\s+\S+", lines[0]):
        for x in lines:
            rng, name = x.split(maxsplit=1)
            a, b = rng.split("-")
            segs.append((int(a) - 1, int(b), name.strip()))
        return segs
    for i, name in enumerate(lines):  # per-frame labels: group runs
        if segs and segs[-1][2] == name and segs[-1][1] == i:
            segs[-1] = (segs[-1][0], i + 1, name)
        else:
            segs.append((i, i + 1, name))
    return segs


def parse_breakfast(files: Sequence[str], root, split: str | None = None) -> list[dict]:
    """Breakfast: segment label files (``P03_cereals.avi.labels``-style ``start-end action`` lines) or
    per-frame label files (``groundTruth/P03_cam01_P03_cereals.txt``), given as files or folders.
    Activity (recipe) = the name after the last ``_``; split 1 (P03-P15 -> "val") unless ``split``."""
    paths: list[Path] = []
    for f in files:
        p = Path(f)
        paths.extend(sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])
    videos = find_videos(root)
    by_relstem = {os.path.splitext(v)[0].replace(os.sep, "/"): v for v in videos.values()}
    for dirpath, _, names in os.walk(root):  # several cameras share a file name: index full paths
        for name in names:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTS:
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                by_relstem[os.path.splitext(rel)[0].replace(os.sep, "/")] = rel
    parsed = []
    for p in paths:
        stem = p.name
        for suffix in (".labels", ".txt"):
            stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        stem = os.path.splitext(stem)[0] if os.path.splitext(stem)[1].lower() in VIDEO_EXTS else stem
        parts = stem.split("_")
        rel = videos.get(stem)
        if rel is None and len(parts) >= 3:  # P03_cam01_P03_cereals -> P03/cam01/P03_cereals.avi
            rel = by_relstem.get("/".join([parts[0], parts[1], "_".join(parts[2:])]))
        person = parts[0]
        parsed.append((stem, rel or f"{stem}.avi", person, parts[-1], _breakfast_segments(p)))
    activities = _label_map(a for *_, a, _ in parsed)
    actions = _label_map(name for *_, segs in parsed for _, _, name in segs)
    return [
        {
            "video_id": stem,
            "path": rel,
            "split": split or ("val" if person in BREAKFAST_TEST_S1 else "train"),
            "label": activities[act],
            "label_name": act,
            "segments_frames": [(a, b, actions[n]) for a, b, n in segs],
            "captions_frames": [(a, b, n) for a, b, n in segs],
        }
        for stem, rel, person, act, segs in parsed
    ]


def parse_coin(files: Sequence[str], root, split: str | None = None) -> list[dict]:
    """COIN.json: {"database": {id: {recipe_type, class, subset, annotation: [{id, segment, label}]}}}.
    Label = recipe_type, segments = steps (label = step id), captions = step descriptions.
    subset training -> "train", testing -> "val"."""
    videos = find_videos(root)
    out = []
    for fname in files:
        with open(fname) as f:
            db = json.load(f)["database"]
        for vid, v in db.items():
            ann = sorted(v.get("annotation", []), key=lambda a: float(a["segment"][0]))
            subset = v.get("subset", "training")
            out.append(
                {
                    "video_id": vid,
                    "path": _resolve(videos, vid) or f"{vid}.mp4",
                    "split": split or {"training": "train", "testing": "val"}.get(subset, subset),
                    "label": int(v["recipe_type"]),
                    "label_name": v.get("class"),
                    "segments": [
                        {
                            "start_s": float(a["segment"][0]),
                            "end_s": float(a["segment"][1]),
                            "label": int(a["id"]),
                        }
                        for a in ann
                    ],
                    "captions": [
                        {
                            "start_s": float(a["segment"][0]),
                            "end_s": float(a["segment"][1]),
                            "text": a["label"],
                        }
                        for a in ann
                    ],
                }
            )
    return out


PARSERS: dict[str, Callable[..., list[dict]]] = {
    "csv": parse_csv,
    "kinetics": parse_kinetics,
    "ssv2": parse_ssv2,
    "howto100m": parse_howto100m,
    "breakfast": parse_breakfast,
    "coin": parse_coin,
    "htm_align": parse_htm_align,
}


# ----------------------------------------------------------------------------- build


def _probe(args: tuple[str, bool]) -> tuple[dict | None, str | None, str]:
    path, exact = args
    try:
        m = probe_video(path, exact=exact)
        return m.__dict__, None, ""
    except DecodeError as e:
        return None, e.reason, e.detail
    except Exception as e:  # a crash in one file must not stop the build
        return None, "unreadable", f"{type(e).__name__}: {e}"


def probe_many(
    paths: Sequence[str], workers: int = 0, exact: bool = True, desc: str = "probe"
) -> list[tuple]:
    """Probe ``paths`` in ``workers`` processes (0 = one per CPU, 1 = in-process), with a progress bar."""
    workers = workers or min(8, os.cpu_count() or 1)
    args = [(p, exact) for p in paths]
    if workers <= 1 or len(paths) <= 1:
        return [_probe(a) for a in tqdm(args, desc=desc, unit="video", disable=None)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(pool.map(_probe, args, chunksize=4), total=len(args), desc=desc, unit="video", disable=None)
        )


def build_index(
    records: list[dict],
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 0,
    info: dict | None = None,
    exact: bool = True,
) -> tuple[int, list[dict]]:
    """Probe every record's video and write ``out`` (+ ``*.errors.parquet``). Returns (rows, errors)."""
    root = Path(root)
    results = probe_many([str(root / r["path"]) for r in records], workers=workers, exact=exact)
    rows, errors = [], []
    for rec, (meta, reason, detail) in zip(records, results, strict=True):
        if meta is None:
            errors.append(
                {
                    "video_id": rec["video_id"],
                    "path": rec["path"],
                    "stage": "probe",
                    "reason": reason + (f": {detail}" if detail else ""),
                }
            )
            continue
        row = {**rec, **meta}
        fps = meta["fps"]
        if "segments_frames" in row:
            row["segments"] = [
                {"start_s": a / fps, "end_s": b / fps, "label": lab}
                for a, b, lab in row.pop("segments_frames")
            ]
        if "captions_frames" in row:
            row["captions"] = [
                {"start_s": a / fps, "end_s": b / fps, "text": t} for a, b, t in row.pop("captions_frames")
            ]
        if row.pop("drop_late_captions", False):
            errors.extend(_drop_late_captions(row))
        rows.append(row)
    write_index(rows, out, errors=errors, info={"root": str(root), **(info or {})})
    return len(rows), errors


def build(
    fmt: str,
    annotations: Sequence[str],
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 0,
    split: str | None = None,
    labels: str | None = None,
) -> tuple[int, list[dict]]:
    """Parse ``annotations`` in format ``fmt`` and build the index at ``out``."""
    if fmt not in PARSERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(PARSERS)}")
    kwargs: dict[str, Any] = {"split": split}
    if fmt == "ssv2":
        kwargs["labels"] = labels
    records = PARSERS[fmt]([str(a) for a in annotations], root, **kwargs)
    return build_index(records, root, out, workers=workers, info={"format": fmt})
