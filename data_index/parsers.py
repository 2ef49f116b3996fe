"""Annotation parsers, one per dataset format, each a *stream* of entries.

A parser reads its annotation files incrementally (JSON with ``ijson``, CSV row by row) and yields one
``(record, errors)`` pair per annotation entry (a video: a JSON key, a CSV row or run of rows, a label
file): ``record`` is a dict (video_id, path relative to root, split, label, label_name, segments,
captions) or None when the entry is unusable, ``errors`` the errors-table rows (stage ``annotations``)
for what was wrong in it. Nothing holds every entry at once; formats whose label ids need every name
(csv names, kinetics, breakfast) read the files twice. A file that cannot be read at all raises
:class:`DataIndexError` naming the file and the position.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import ijson

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")

Entry = tuple[dict | None, list[dict]]


class DataIndexError(ValueError):
    """An input problem that stops the command; its message is one line for the user."""


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


@dataclass
class Source:
    """What a parser reads: annotation files, the video root, and the builder's options."""

    files: list[str]
    root: Path
    split: str | None = None
    labels: str | None = None
    _seen: set = field(default_factory=set, repr=False)
    _warned: set = field(default_factory=set, repr=False)

    @cached_property
    def videos(self) -> dict[str, str]:
        return find_videos(self.root)

    def warn(self, message: str) -> None:
        """Print ``message`` once (a build reads the annotations twice)."""
        if message not in self._warned:
            self._warned.add(message)
            print(f"data_index: warning: {message}", file=sys.stderr)

    def resolve(self, *candidates: str, default: str) -> str:
        for c in candidates:
            if c in self.videos:
                return self.videos[c]
        return default


def annotation_error(video_id: Any, path: Any, where: str, what: str) -> dict:
    return {"video_id": video_id, "path": path, "stage": "annotations", "reason": f"{where}: {what}"}


def _number(x: Any, name: str) -> float:
    """A finite float from a JSON/CSV value; ValueError saying what is wrong otherwise."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {x!r} is not a number") from None
    if not math.isfinite(v) or isinstance(x, bool):
        raise ValueError(f"{name} {x!r} is not a number")
    return v


def _text(x: Any, name: str = "text") -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, int | float) and not isinstance(x, bool):
        return str(x)
    raise ValueError(f"{name} {x!r} is not a string")


# ----------------------------------------------------------------------------- readers


def _first_char(f) -> bytes:
    while (c := f.read(1)) and c.isspace():
        pass
    return c


def iter_json(path: str, kind: str, prefix: str = "") -> Iterator[tuple[Any, Any]]:
    """(key, value) of the JSON object at ``prefix`` (``kind="object"``), or (position, item) of the
    top-level array (``kind="array"``), one at a time. A file that is not valid JSON raises
    DataIndexError with the entry it stopped after and the byte it had read up to."""
    with open(path, "rb") as f:
        if not prefix:  # ijson would find no items in a top level of the other kind: say so
            first, want = _first_char(f), b"{" if kind == "object" else b"["
            if first != want:
                found = "an empty file" if not first else f"{first.decode(errors='replace')!r}"
                raise DataIndexError(f"{path}: expected a JSON {kind}, found {found} at the start")
            f.seek(0)
        if kind == "object":
            items = ijson.kvitems(f, prefix, use_float=True)
        else:
            items = enumerate(ijson.items(f, "item", use_float=True))
        n, last = 0, None
        try:
            for key, value in items:
                yield key, value
                n, last = n + 1, key
        except ijson.JSONError as e:
            after = f"after entry {n - 1} ({last!r})" if n else "before the first entry"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataIndexError(f"{path}: invalid JSON {after}, before byte {f.tell()}: {reason}") from None


def iter_csv(path: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row with stripped keys and values) of a CSV file with a header."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                fields = {
                    (k or "").strip(): v.strip() if isinstance(v, str) else v for k, v in row.items() if k
                }
                yield reader.line_num, fields  # (k None: fields beyond the header, dropped)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataIndexError(f"{path} line {reader.line_num + 1}: cannot read as CSV: {e}") from None


def csv_header(path: str) -> list[str]:
    try:
        with open(path, newline="") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataIndexError(f"{path}: cannot read as CSV: {e}") from None


def _label_map(names) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(set(names)))}


def _is_int(x: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", str(x).strip()))


# ----------------------------------------------------------------------------- parsers


def parse_csv(src: Source) -> Iterator[Entry]:
    """``path,label`` header (+ optional ``split``, ``label_name``, ``video_id``). Labels are ints,
    or names mapped to ids in sorted order (a first pass reads the names)."""
    for fname in src.files:
        header = csv_header(fname)
        if not {"path", "label"} <= set(header):
            raise DataIndexError(
                f"{fname}: csv annotations need a header with at least path,label; got {header}"
            )
    names = [r["label"] for f in src.files for _, r in iter_csv(f) if r.get("label") not in (None, "")]
    int_labels = all(_is_int(x) for x in names)
    lmap = {} if int_labels else _label_map(names)
    del names
    for fname in src.files:
        for line, r in iter_csv(fname):
            if not r.get("path"):
                yield None, [annotation_error(r.get("video_id"), None, f"{fname} line {line}", "no path")]
                continue
            lab = r.get("label")
            if lab in (None, ""):
                label, lname = -1, None
            elif int_labels:
                label, lname = int(lab), r.get("label_name") or None
            else:
                label, lname = lmap[lab], lab
            yield (
                {
                    "video_id": r.get("video_id") or Path(r["path"]).stem,
                    "path": r["path"],
                    "split": r.get("split") or src.split or "train",
                    "label": label,
                    "label_name": lname,
                },
                [],
            )


def parse_kinetics(src: Source) -> Iterator[Entry]:
    """Official Kinetics CSVs (label, youtube_id, time_start, time_end, split). Files are found by
    stem ``{youtube_id}_{start:06d}_{end:06d}`` or ``{youtube_id}`` anywhere under root."""
    lmap = _label_map(r["label"] for f in src.files for _, r in iter_csv(f) if r.get("label"))
    for fname in src.files:
        for line, r in iter_csv(fname):
            yid = r.get("youtube_id")
            try:
                if not yid:
                    raise ValueError("no youtube_id")
                ts = int(_number(r.get("time_start"), "time_start"))
                te = int(_number(r.get("time_end"), "time_end"))
            except ValueError as e:
                yield None, [annotation_error(yid, None, f"{fname} line {line}", str(e))]
                continue
            stem = f"{yid}_{ts:06d}_{te:06d}"
            sp = src.split or r.get("split") or "train"
            sp = {"validate": "val", "validation": "val"}.get(sp, sp)
            yield (
                {
                    "video_id": stem,
                    "path": src.resolve(stem, yid, default=f"{stem}.mp4"),
                    "split": sp,
                    "label": lmap[r["label"]] if r.get("label") else -1,
                    "label_name": r.get("label") or None,
                },
                [],
            )


def parse_ssv2(src: Source) -> Iterator[Entry]:
    """Something-Something v2: the JSON annotation lists (id, template, ...) + the labels JSON
    (template without brackets -> id). Split from ``split`` or the file name (train/validation/test)."""
    if not src.labels:
        raise DataIndexError("ssv2 needs --labels (something-something-v2-labels.json)")
    lmap = {}
    for k, v in iter_json(src.labels, "object"):
        if not _is_int(v):
            raise DataIndexError(f"{src.labels}: label {k!r} has id {v!r}, not an integer")
        lmap[k] = int(v)
    for fname in src.files:
        sp = src.split
        if sp is None:
            low = Path(fname).name.lower()
            sp = "val" if "valid" in low else "test" if "test" in low else "train"
        for i, it in iter_json(fname, "array"):
            vid = str(it["id"]) if isinstance(it, dict) and "id" in it else None
            where = f"{fname} item {i}"
            if vid is None:
                yield None, [annotation_error(None, None, where, f"no 'id' in {it!r:.80}")]
                continue
            tmpl = it.get("template")
            name = tmpl.replace("[", "").replace("]", "") if isinstance(tmpl, str) else None
            if name is not None and name not in lmap:
                yield None, [annotation_error(vid, None, where, f"template {name!r} not in {src.labels}")]
                continue
            yield (
                {
                    "video_id": vid,
                    "path": src.resolve(vid, default=f"{vid}.webm"),
                    "split": sp,
                    "label": lmap[name] if name is not None else -1,
                    "label_name": name,
                },
                [],
            )


def _caption_record(src: Source, vid: str, captions: list[dict], split: str | None) -> dict:
    return {
        "video_id": vid,
        "path": src.resolve(vid, default=f"{vid}.mp4"),
        "split": src.split or split or "train",
        "label": -1,
        "label_name": None,
        "captions": sorted(captions, key=lambda x: x["start_s"]),
    }


def _first_time(src: Source, vid: str, where: str) -> dict | None:
    """None the first time a video id is seen; later, the error row for the repeated entry (its
    captions would belong with the first, which was indexed already)."""
    if vid not in src._seen:
        src._seen.add(vid)
        return None
    return annotation_error(vid, None, where, "video listed again (its earlier entry is indexed): dropped")


def _howto100m_json(src: Source, fname: str) -> Iterator[Entry]:
    for vid, c in iter_json(fname, "object"):
        vid = str(vid)
        where = f"{fname} (video {vid})"
        if (dup := _first_time(src, vid, where)) is not None:
            yield None, [dup]
            continue
        lists = {k: c.get(k) for k in ("start", "end", "text")} if isinstance(c, dict) else {}
        bad = [k for k, v in lists.items() if not isinstance(v, list)]
        if not isinstance(c, dict) or bad:
            what = f"no {'/'.join(repr(k) for k in bad)} list" if lists else f"not an object: {c!r:.80}"
            yield None, [annotation_error(vid, None, where, f"{what}: video dropped")]
            continue
        lens = {k: len(v) for k, v in lists.items()}
        if len(set(lens.values())) > 1:
            what = ", ".join(f"{k} {n}" for k, n in lens.items())
            yield (
                None,
                [annotation_error(vid, None, where, f"lists of different lengths ({what}): video dropped")],
            )
            continue
        caps, errors = [], []
        for i, (s, e, t) in enumerate(zip(lists["start"], lists["end"], lists["text"], strict=True)):
            try:
                caps.append({"start_s": _number(s, "start"), "end_s": _number(e, "end"), "text": _text(t)})
            except ValueError as err:
                errors.append(annotation_error(vid, None, f"{where} caption {i}", f"{err}: dropped"))
        rec = _caption_record(src, vid, caps, None)
        for err in errors:
            err["path"] = rec["path"]
        yield rec, errors


def _howto100m_csv(src: Source, fname: str) -> Iterator[Entry]:
    """One row per caption; a video's rows one after another (a file that is not grouped so is
    regrouped in memory, with a warning: sort it by video_id for a bounded-memory build)."""
    rows = iter_csv(fname)
    if not _grouped(fname):
        src.warn(f"{fname}: a video's rows are not consecutive: grouped in memory (sort by video_id)")
        rows = iter(sorted(iter_csv(fname), key=_GroupOrder(fname)))
    for vid, group in itertools.groupby(rows, key=lambda lr: lr[1].get("video_id")):
        caps, errors, split = [], [], None
        for line, r in group:
            try:
                if not vid:
                    raise ValueError("no video_id")
                caps.append(
                    {
                        "start_s": _number(r.get("start"), "start"),
                        "end_s": _number(r.get("end"), "end"),
                        "text": _text(r.get("text")),
                    }
                )
            except ValueError as err:
                errors.append(annotation_error(vid or None, None, f"{fname} line {line}", f"{err}: dropped"))
            split = r.get("split") or split
        if not vid:
            yield None, errors
            continue
        if (dup := _first_time(src, vid, f"{fname} line {line}")) is not None:
            yield None, [dup]
            continue
        rec = _caption_record(src, vid, caps, split)
        for err in errors:
            err["path"] = rec["path"]
        yield rec, errors


def _grouped(fname: str) -> bool:
    done, current = set(), None
    for _, r in iter_csv(fname):
        vid = r.get("video_id")
        if vid != current:
            if vid in done:
                return False
            done.add(current)
            current = vid
    return True


class _GroupOrder:
    """Sort key putting a video's rows together, videos in order of first appearance."""

    def __init__(self, fname: str):
        self.first: dict[str, int] = {}
        for i, (_, r) in enumerate(iter_csv(fname)):
            self.first.setdefault(r.get("video_id"), i)

    def __call__(self, line_row):
        return self.first[line_row[1].get("video_id")], line_row[0]


def parse_howto100m(src: Source) -> Iterator[Entry]:
    """HowTo100M captions: ``caption.json`` ({video_id: {start: [...], end: [...], text: [...]}}) or a
    CSV with video_id,start,end,text (+ optional split) rows, one per caption, a video's rows together.
    Captions sorted by start."""
    src._seen.clear()
    for fname in src.files:
        yield from (_howto100m_json if str(fname).endswith(".json") else _howto100m_csv)(src, fname)


def parse_htm_align(src: Source) -> Iterator[Entry]:
    """HTM-Align (Han, Xie, Zisserman, CVPR 2022): JSON ``{video_id: [[alignable 0|1, start_s, end_s,
    text], ...]}``. Label -1, split "test" unless ``split``; captions sorted by start with their
    ``alignable`` flag. Sentences starting at or after the end of their video are dropped at build time
    and reported in the errors table (stage "captions")."""
    src._seen.clear()
    for fname in src.files:
        for vid, sentences in iter_json(fname, "object"):
            vid = str(vid)
            where = f"{fname} (video {vid})"
            path = src.resolve(vid, default=f"{vid}.mp4")
            if (dup := _first_time(src, vid, where)) is not None:
                yield None, [dup]
                continue
            if not isinstance(sentences, list):
                yield (
                    None,
                    [
                        annotation_error(
                            vid, path, where, f"not a list of sentences: {sentences!r:.80}: video dropped"
                        )
                    ],
                )
                continue
            caps, errors = [], []
            for i, s in enumerate(sentences):
                try:
                    if not isinstance(s, list) or len(s) != 4:
                        raise ValueError(f"expected [alignable, start_s, end_s, text], got {s!r:.80}")
                    flag, start, end, text = s
                    if flag not in (0, 1):
                        raise ValueError(f"alignable {flag!r} is not 0 or 1")
                    caps.append(
                        {
                            "start_s": _number(start, "start_s"),
                            "end_s": _number(end, "end_s"),
                            "text": _text(text),
                            "alignable": bool(flag),
                            "ann_index": i,  # position in the annotation file, for error reports
                        }
                    )
                except ValueError as err:
                    errors.append(annotation_error(vid, path, f"{where} sentence {i}", f"{err}: dropped"))
            yield (
                {
                    "video_id": vid,
                    "path": path,
                    "split": src.split or "test",
                    "label": -1,
                    "label_name": None,
                    "captions": sorted(caps, key=lambda x: (x["start_s"], x["ann_index"])),
                    "drop_late_captions": True,
                },
                errors,
            )


BREAKFAST_TEST_S1 = {f"P{i:02d}" for i in range(3, 16)}


def _breakfast_segments(path: Path) -> list[tuple[int, int, str]]:
    """Segment file lines ``start-end label`` (1-based frames, inclusive) or one label per frame."""
    lines = [x.strip() for x in path.read_text().splitlines() if x.strip()]
    segs: list[tuple[int, int, str]] = []
    if lines and re.fullmatch(r"\d+-\d+\s+\S+", lines[0]):
        for n, x in enumerate(lines, 1):
            m = re.fullmatch(r"(\d+)-(\d+)\s+(.+)", x)
            if not m:
                raise ValueError(f"line {n}: {x!r} is not 'start-end label'")
            segs.append((int(m[1]) - 1, int(m[2]), m[3].strip()))
        return segs
    for i, name in enumerate(lines):  # per-frame labels: group runs
        if segs and segs[-1][2] == name and segs[-1][1] == i:
            segs[-1] = (segs[-1][0], i + 1, name)
        else:
            segs.append((i, i + 1, name))
    return segs


def _breakfast_files(src: Source) -> Iterator[tuple[Path, str, list | str]]:
    """(file, stem, segments or the error message) of every label file, in a stable order."""
    for f in src.files:
        p = Path(f)
        for path in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
            stem = path.name
            for suffix in (".labels", ".txt"):
                stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
            stem = os.path.splitext(stem)[0] if os.path.splitext(stem)[1].lower() in VIDEO_EXTS else stem
            try:
                yield path, stem, _breakfast_segments(path)
            except (ValueError, UnicodeDecodeError) as e:
                yield path, stem, str(e)


def parse_breakfast(src: Source) -> Iterator[Entry]:
    """Breakfast: segment label files (``P03_cereals.avi.labels``-style ``start-end action`` lines) or
    per-frame label files (``groundTruth/P03_cam01_P03_cereals.txt``), given as files or folders.
    Activity (recipe) = the name after the last ``_``; split 1 (P03-P15 -> "val") unless ``split``."""
    by_relstem = {}
    for dirpath, _, names in os.walk(src.root):  # several cameras share a file name: index full paths
        for name in names:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTS:
                rel = os.path.relpath(os.path.join(dirpath, name), src.root)
                by_relstem[os.path.splitext(rel)[0].replace(os.sep, "/")] = rel
    activities, actions = set(), set()  # first pass: the names, for sorted ids
    for _, stem, segs in _breakfast_files(src):
        if isinstance(segs, list):
            activities.add(stem.split("_")[-1])
            actions.update(name for _, _, name in segs)
    activity_ids, action_ids = _label_map(activities), _label_map(actions)
    for path, stem, segs in _breakfast_files(src):
        parts = stem.split("_")
        rel = src.videos.get(stem)
        if rel is None and len(parts) >= 3:  # P03_cam01_P03_cereals -> P03/cam01/P03_cereals.avi
            rel = by_relstem.get("/".join([parts[0], parts[1], "_".join(parts[2:])]))
        rel = rel or f"{stem}.avi"
        if isinstance(segs, str):
            yield None, [annotation_error(stem, rel, str(path), f"{segs}: video dropped")]
            continue
        act = parts[-1]
        yield (
            {
                "video_id": stem,
                "path": rel,
                "split": src.split or ("val" if parts[0] in BREAKFAST_TEST_S1 else "train"),
                "label": activity_ids[act],
                "label_name": act,
                "segments_frames": [(a, b, action_ids[n]) for a, b, n in segs],
                "captions_frames": [(a, b, n) for a, b, n in segs],
            },
            [],
        )


def parse_coin(src: Source) -> Iterator[Entry]:
    """COIN.json: {"database": {id: {recipe_type, class, subset, annotation: [{id, segment, label}]}}}.
    Label = recipe_type, segments = steps (label = step id), captions = step descriptions.
    subset training -> "train", testing -> "val"."""
    for fname in src.files:
        n = 0
        for vid, v in iter_json(fname, "object", prefix="database"):
            n += 1
            vid = str(vid)
            where = f"{fname} (video {vid})"
            path = src.resolve(vid, default=f"{vid}.mp4")
            try:
                if not isinstance(v, dict):
                    raise ValueError(f"not an object: {v!r:.80}")
                label = int(_number(v.get("recipe_type"), "recipe_type"))
                ann = v.get("annotation", [])
                if not isinstance(ann, list):
                    raise ValueError(f"annotation {ann!r:.80} is not a list")
            except ValueError as e:
                yield None, [annotation_error(vid, path, where, f"{e}: video dropped")]
                continue
            steps, errors = [], []
            for i, a in enumerate(ann):
                try:
                    seg = a.get("segment") if isinstance(a, dict) else None
                    if not isinstance(seg, list) or len(seg) != 2:
                        raise ValueError(f"segment {seg!r} is not [start, end]")
                    start, end = _number(seg[0], "segment start"), _number(seg[1], "segment end")
                    steps.append(
                        (start, end, int(_number(a.get("id"), "id")), _text(a.get("label"), "label"))
                    )
                except ValueError as e:
                    errors.append(annotation_error(vid, path, f"{where} step {i}", f"{e}: dropped"))
            steps.sort(key=lambda s: s[0])
            subset = v.get("subset", "training")
            yield (
                {
                    "video_id": vid,
                    "path": path,
                    "split": src.split or {"training": "train", "testing": "val"}.get(subset, subset),
                    "label": label,
                    "label_name": v.get("class"),
                    "segments": [{"start_s": s, "end_s": e, "label": i} for s, e, i, _ in steps],
                    "captions": [{"start_s": s, "end_s": e, "text": t} for s, e, _, t in steps],
                },
                errors,
            )
        if n == 0:
            raise DataIndexError(
                f'{fname}: no videos under "database" (COIN.json is {{"database": {{id: {{...}}}}}})'
            )


PARSERS: dict[str, Callable[[Source], Iterator[Entry]]] = {
    "csv": parse_csv,
    "kinetics": parse_kinetics,
    "ssv2": parse_ssv2,
    "howto100m": parse_howto100m,
    "breakfast": parse_breakfast,
    "coin": parse_coin,
    "htm_align": parse_htm_align,
}
