"""The embedded demo dataset: procedurally generated, deterministic by seed, real mp4 files.

A digit (drawn with Pillow) moves over a textured, noisy background, wrapping around the frame
edges, so its position in any single frame is uniform whatever the class: only motion tells the
direction apart. Three parts, each indexed by the same builder code as a real dataset:

- ``actions``: one direction per clip (4 classes: left/right/up/down) -> ``csv`` builder;
- ``captions``: the same kind of clips with a sentence (digit, colour, direction) -> ``howto100m``;
- ``long``: 4 sub-actions (every direction once) whose *order* is the activity class, segment
  boundaries and one caption per segment with timestamps -> ``coin`` builder;
- ``vlp``: long narrated videos for video-language pretraining: 4-6 segments, the digit changes colour
  AND direction at every segment, one sentence per segment. Train/val narration (timestamps jittered
  by up to 0.25 s, like ASR) -> ``howto100m`` builder; a separate alignment test set with the exact
  segment spans (alignable) plus 1-2 sentences naming a colour absent from the video (not
  alignable) -> ``htm_align`` builder.

The parts are generated in that order with their own seeds (``[seed, part, split, i]``), so adding a
part never changes the videos of the earlier ones.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from data_index.builders import build
from data_index.videowrite import write_video

DIRECTIONS = ("left", "right", "up", "down")
_VEL = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Long-video activities: the same four sub-actions, in different orders.
ACTIVITIES = {
    "square clockwise": ("right", "down", "left", "up"),
    "square anticlockwise": ("left", "down", "right", "up"),
    "zigzag horizontal": ("right", "up", "left", "down"),
    "zigzag vertical": ("down", "left", "up", "right"),
}
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 220, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "magenta": (230, 50, 220),
}
# The vlp part's palette: two more colours, so a video of up to 6 segments, each a different colour,
# always leaves colours absent from it (for the non-alignable sentences). COLOURS itself is unchanged:
# the earlier parts draw from it by position.
VLP_COLOURS = {**COLOURS, "cyan": (40, 220, 230), "orange": (250, 140, 20)}
JITTER_S = 0.25  # vlp narration: timestamps moved by up to this much
FPS = 12
DEMO_BIT_RATE = 1_500_000  # high for 64x64: near-lossless, so the noise texture survives


@dataclass(frozen=True)
class DemoSize:
    size: int  # frame height = width
    frames: int  # frames per action / caption clip
    seg_frames: tuple[int, int]  # long videos: frames per segment (min, max)
    actions: tuple[int, int]  # (train, val) clips
    captions: tuple[int, int]
    long: tuple[int, int]
    vlp: tuple[int, int, int] = (160, 32, 16)  # (train, val, align) narrated videos
    vlp_segments: tuple[int, int] = (4, 6)  # segments per vlp video (min, max)
    vlp_seg_frames: tuple[int, int] = (20, 28)  # frames per vlp segment (min, max)


SIZES = {
    "default": DemoSize(64, 24, (20, 28), (384, 96), (192, 48), (512, 64)),
    "tiny": DemoSize(
        32, 16, (8, 10), (8, 4), (4, 2), (4, 2), vlp=(4, 2, 2), vlp_segments=(2, 3), vlp_seg_frames=(8, 10)
    ),
}


def _glyph(digit: int, size: int) -> np.ndarray:
    """Float mask (h, w) of a digit, about 45% of the frame tall."""
    font = ImageFont.load_default(size=max(8, int(size * 0.6)))
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((0, 0), str(digit), font=font, stroke_width=max(1, size // 24))
    draw.text((-box[0], -box[1]), str(digit), fill=255, font=font, stroke_width=max(1, size // 24))
    mask = np.asarray(img, dtype=np.float32)[: box[3] - box[1], : box[2] - box[0]] / 255.0
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour texture plus stripes, (size, size, 3) float."""
    coarse = rng.uniform(60, 160, size=(6, 6, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.2, 0.6)
    stripes = 12 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    return np.clip(img + stripes[..., None], 0, 255)


def render_clip(
    rng: np.random.Generator,
    size: int,
    directions: list[str],
    seg_lengths: list[int],
    colours: list[str] | None = None,
) -> tuple[np.ndarray, dict]:
    """(T, size, size, 3) uint8: one digit moving through ``directions`` for ``seg_lengths`` frames.

    One colour drawn for the whole clip, or ``colours`` (names in VLP_COLOURS), one per segment; the
    random draws without ``colours`` are exactly those of the one-colour clips."""
    digit = int(rng.integers(10))
    if colours is None:
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        seg_colours = [colour] * len(directions)
    else:
        if len(colours) != len(directions):
            raise ValueError(f"{len(colours)} colours for {len(directions)} segments")
        colour, seg_colours = colours[0], list(colours)
    glyph = _glyph(digit, size)
    gh, gw = glyph.shape
    layer = np.zeros((size, size), np.float32)
    layer[:gh, :gw] = glyph
    bg = _background(rng, size)
    speed = rng.uniform(2.5, 3.5) * size / 64
    pos = rng.uniform(0, size, size=2)  # (x, y)
    frames = []
    for direction, n, cname in zip(directions, seg_lengths, seg_colours, strict=True):
        col = np.array(VLP_COLOURS[cname], np.float32)
        vx, vy = _VEL[direction]
        for _ in range(n):
            mask = np.roll(layer, (int(round(pos[1])) % size, int(round(pos[0])) % size), axis=(0, 1))[
                ..., None
            ]
            frame = bg * (1 - mask) + col * mask + rng.normal(0, 8, size=(size, size, 3))
            frames.append(np.clip(frame, 0, 255).astype(np.uint8))
            pos += (vx * speed, vy * speed)
    return np.stack(frames), {"digit": digit, "colour": colour, "colours": seg_colours}


def _sentence(rng: np.random.Generator, digit: int, colour: str, direction: str) -> str:
    templates = (
        "a {c} {d} moves {dir}",
        "the {c} digit {d} slides to the {dir}",
        "a {c} number {d} travelling {dir} over a noisy background",
    )
    where = {"left": "left", "right": "right", "up": "up", "down": "down"}[direction]
    t = templates[int(rng.integers(len(templates)))]
    if colour[0] in "aeiou":  # vlp colours (orange); the other parts' colours all start with a consonant
        t = t.replace("a {c}", "an {c}")
    return (
        t.format(c=colour, d=digit, dir=where)
        .replace("to the up", "upwards")
        .replace("to the down", "downwards")
    )


def _vlp_plan(rng: np.random.Generator, sz: DemoSize) -> tuple[list[str], list[int], list[str]]:
    """Directions, segment lengths and colours of a vlp video: colours all different within the
    video, and the direction changes at every segment."""
    n = int(rng.integers(sz.vlp_segments[0], sz.vlp_segments[1] + 1))
    lens = [int(rng.integers(sz.vlp_seg_frames[0], sz.vlp_seg_frames[1] + 1)) for _ in range(n)]
    palette = list(VLP_COLOURS)
    colours = [palette[int(i)] for i in rng.choice(len(palette), size=n, replace=False)]
    dirs = [DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]]
    while len(dirs) < n:
        others = [d for d in DIRECTIONS if d != dirs[-1]]
        dirs.append(others[int(rng.integers(len(others)))])
    return dirs, lens, colours


def _vlp_sentences(rng: np.random.Generator, sz: DemoSize, split: str, lens, dirs, attrs) -> list[dict]:
    """One sentence per segment (+ 1-2 non-alignable ones for the alignment set), sorted by start.

    Narration (train/val): the segment's span with each end moved by up to JITTER_S, kept inside the
    video. Alignment set: the exact span, ``alignable`` 1; the extra sentences name a colour absent
    from the video, at a random segment-like span inside it, ``alignable`` 0."""
    edges = np.cumsum([0, *lens]) / FPS
    dur = float(edges[-1])
    out = []
    for i, d in enumerate(dirs):
        start, end = float(edges[i]), float(edges[i + 1])
        text = _sentence(rng, attrs["digit"], attrs["colours"][i], d)
        if split != "align":
            start, end = start + rng.uniform(-JITTER_S, JITTER_S), end + rng.uniform(-JITTER_S, JITTER_S)
            start = min(max(start, 0.0), dur - 1 / FPS)
            end = min(max(end, start + 1 / FPS), dur)
        out.append({"start": round(start, 3), "end": round(end, 3), "text": text, "alignable": 1})
    if split == "align":
        absent = [c for c in VLP_COLOURS if c not in attrs["colours"]]
        for _ in range(int(rng.integers(1, 3))):
            colour = absent[int(rng.integers(len(absent)))]
            d = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
            length = min(dur, int(rng.integers(sz.vlp_seg_frames[0], sz.vlp_seg_frames[1] + 1)) / FPS)
            start = float(rng.uniform(0, dur - length))
            text = _sentence(rng, attrs["digit"], colour, d)
            out.append(
                {"start": round(start, 3), "end": round(start + length, 3), "text": text, "alignable": 0}
            )
    return sorted(out, key=lambda x: x["start"])


def _job(job: dict) -> dict:
    """Render and write one video; returns its annotation record."""
    rng = np.random.default_rng(job["seed_key"])
    sz: DemoSize = job["size"]
    kind = job["kind"]
    if kind == "vlp":
        dirs, lens, colours = _vlp_plan(rng, sz)
        frames, attrs = render_clip(rng, sz.size, dirs, lens, colours=colours)
        write_video(job["abs_path"], frames, FPS, gop=12, codec="mpeg4", bit_rate=DEMO_BIT_RATE)
        rec = {k: job[k] for k in ("video_id", "path", "split", "label", "kind")}
        rec["sentences"] = _vlp_sentences(rng, sz, job["split"], lens, dirs, attrs)
        return rec
    if kind == "long":
        activity = list(ACTIVITIES)[job["label"]]
        dirs = list(ACTIVITIES[activity])
        lens = [int(rng.integers(sz.seg_frames[0], sz.seg_frames[1] + 1)) for _ in dirs]
    else:
        dirs, lens = [DIRECTIONS[job["label"]]], [sz.frames]
    frames, attrs = render_clip(rng, sz.size, dirs, lens)
    # FFmpeg's own MPEG-4 encoder: same frames, same file. libx264 was seen to vary between runs here.
    write_video(job["abs_path"], frames, FPS, gop=12, codec="mpeg4", bit_rate=DEMO_BIT_RATE)
    rec = {k: job[k] for k in ("video_id", "path", "split", "label", "kind")}
    if kind == "captions":
        rec["text"] = _sentence(rng, attrs["digit"], attrs["colour"], dirs[0])
        rec["end_s"] = len(frames) / FPS
    if kind == "long":
        rec["activity"] = activity
        edges = np.cumsum([0, *lens]) / FPS
        rec["steps"] = [
            {
                "dir": d,
                "start": float(edges[i]),
                "end": float(edges[i + 1]),
                "text": _sentence(rng, attrs["digit"], attrs["colour"], d),
            }
            for i, d in enumerate(dirs)
        ]
    return rec


def generate_demo(
    out: str | os.PathLike, seed: int = 0, size: str = "default", workers: int = 0
) -> dict[str, Path]:
    """Write the demo videos, annotation files and the five indexes under ``out``; returns
    {"actions", "captions", "long", "vlp", "vlp_align"} -> index file (their video root is ``out``)."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SIZES)}")
    sz = SIZES[size]
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    jobs = []
    n_classes = {"actions": len(DIRECTIONS), "captions": len(DIRECTIONS), "long": len(ACTIVITIES)}
    for k, kind in enumerate(("actions", "captions", "long")):
        for s, (split, count) in enumerate(zip(("train", "val"), getattr(sz, kind), strict=True)):
            for i in range(count):
                vid = f"{kind[:3]}_{split}_{i:05d}"
                rel = f"videos/{kind}/{split}/{vid}.mp4"
                jobs.append(
                    {
                        "kind": kind,
                        "split": split,
                        "video_id": vid,
                        "path": rel,
                        "abs_path": str(out / rel),
                        "label": i % n_classes[kind],
                        "seed_key": [seed, k, s, i],
                        "size": sz,
                    }
                )
    # Part 4 (after the others: their jobs and seeds are unchanged): narrated videos, label -1.
    for s, (split, count) in enumerate(zip(("train", "val", "align"), sz.vlp, strict=True)):
        for i in range(count):
            vid = f"vlp_{split}_{i:05d}"
            rel = f"videos/vlp/{split}/{vid}.mp4"
            jobs.append(
                {
                    "kind": "vlp",
                    "split": split,
                    "video_id": vid,
                    "path": rel,
                    "abs_path": str(out / rel),
                    "label": -1,
                    "seed_key": [seed, 3, s, i],
                    "size": sz,
                }
            )
    workers = workers or min(8, os.cpu_count() or 1)
    # Encode in clean child processes (forkserver, this module preloaded), not forks of a parent that may
    # hold torch/decord threads.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["data_index.demo"])
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        recs = list(
            tqdm(pool.map(_job, jobs, chunksize=8), total=len(jobs), desc="demo videos", disable=None)
        )
    by_kind = {k: [r for r in recs if r["kind"] == k] for k in (*n_classes, "vlp")}

    ann_actions = out / "annotations" / "actions.csv"
    with open(ann_actions, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "path", "label", "label_name", "split"])
        for r in by_kind["actions"]:
            w.writerow([r["video_id"], r["path"], r["label"], DIRECTIONS[r["label"]], r["split"]])
    ann_captions = out / "annotations" / "captions.csv"
    with open(ann_captions, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "start", "end", "text", "split"])
        for r in by_kind["captions"]:
            w.writerow([r["video_id"], 0.0, f"{r['end_s']:.3f}", r["text"], r["split"]])
    step_ids = {d: i for i, d in enumerate(DIRECTIONS)}
    coin = {
        "database": {
            r["video_id"]: {
                "recipe_type": r["label"],
                "class": r["activity"],
                "subset": "training" if r["split"] == "train" else "testing",
                "annotation": [
                    {"id": str(step_ids[s["dir"]]), "segment": [s["start"], s["end"]], "label": s["text"]}
                    for s in r["steps"]
                ],
            }
            for r in by_kind["long"]
        }
    }
    ann_long = out / "annotations" / "long_coin.json"
    ann_long.write_text(json.dumps(coin, indent=1))
    ann_vlp = out / "annotations" / "vlp.csv"  # HowTo100M-style narration, one row per sentence
    with open(ann_vlp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "start", "end", "text", "split"])
        for r in by_kind["vlp"]:
            if r["split"] != "align":
                for c in r["sentences"]:
                    w.writerow([r["video_id"], f"{c['start']:.3f}", f"{c['end']:.3f}", c["text"], r["split"]])
    ann_align = out / "annotations" / "vlp_htm_align.json"  # HTM-Align format
    align = {
        r["video_id"]: [[c["alignable"], c["start"], c["end"], c["text"]] for c in r["sentences"]]
        for r in by_kind["vlp"]
        if r["split"] == "align"
    }
    ann_align.write_text(json.dumps(align, indent=1))

    probe_workers = min(workers, 4)
    paths = {
        "actions": out / "actions.parquet",
        "captions": out / "captions.parquet",
        "long": out / "long.parquet",
        "vlp": out / "vlp.parquet",
        "vlp_align": out / "vlp_align.parquet",
    }
    build("csv", [ann_actions], out, paths["actions"], workers=probe_workers)
    build("howto100m", [ann_captions], out, paths["captions"], workers=probe_workers)
    build("coin", [ann_long], out, paths["long"], workers=probe_workers)
    build("howto100m", [ann_vlp], out, paths["vlp"], workers=probe_workers)
    build("htm_align", [ann_align], out, paths["vlp_align"], workers=probe_workers)
    return paths


def generate_long_align(
    out: str | os.PathLike,
    seconds: list[int],
    *,
    fps: int = 10,
    size: int = 64,
    segment_s: int = 10,
    seed: int = 0,
) -> dict[int, Path]:
    """Long narrated videos for the alignment memory benchmark (``scripts/bench_align_memory.py``):
    one video per length in ``seconds``, the vlp part's kind of picture (a digit that changes colour
    and direction every ``segment_s`` seconds) with one alignable sentence per segment, each in its
    own HTM-Align index ``align_{S}s.parquet`` (split test, video root ``out``). Returns {S: index}."""
    out = Path(out)
    palette = list(VLP_COLOURS)
    paths = {}
    for length in seconds:
        rng = np.random.default_rng([seed, 4, int(length)])
        n_seg = -(-int(length) // segment_s)
        lens = [segment_s * fps] * (n_seg - 1) + [int(length) * fps - (n_seg - 1) * segment_s * fps]
        dirs = [DIRECTIONS[i % len(DIRECTIONS)] for i in range(n_seg)]
        colours = [palette[i % len(palette)] for i in range(n_seg)]
        frames, info = render_clip(rng, size, dirs, lens, colours)
        vid = f"align_{int(length)}s"
        write_video(out / "videos" / f"{vid}.mp4", frames, fps, gop=fps * 2)
        starts = np.cumsum([0, *lens[:-1]]) / fps
        sentences = [
            [1, float(t), float(t) + n / fps, _sentence(rng, info["digit"], c, d)]
            for t, n, c, d in zip(starts, lens, colours, dirs, strict=True)
        ]
        ann = out / "annotations" / f"{vid}.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps({vid: sentences}))
        paths[int(length)] = out / f"{vid}.parquet"
        build("htm_align", [ann], out, paths[int(length)], workers=1)
    return paths


LAYOUT = """\
{out}/
  actions.parquet    action clips ({a_train} train / {a_val} val), 4 classes by motion direction
                     (0 left, 1 right, 2 up, 3 down); {size}x{size} px, {frames} frames @ {fps} fps
  captions.parquet   captioned clips ({c_train} train / {c_val} val), one sentence each, label -1
  long.parquet       long videos ({l_train} train / {l_val} val), 4 activities = orders of 4 sub-actions,
                     segments (start_s, end_s, direction) + one caption per segment
  vlp.parquet        narrated videos for video-text pretraining ({v_train} train / {v_val} val), label -1:
                     {v_seg} segments of {v_frames} frames, the digit changes colour AND direction at
                     every segment; one sentence per segment, timestamps jittered by up to {jitter} s
  vlp_align.parquet  alignment test set ({v_align} videos, split test, HTM-Align style): exact segment
                     spans (alignable) + 1-2 sentences of an absent colour per video (not alignable)
  *.errors.parquet   videos that failed to index (empty for the demo)
  annotations/       actions.csv (csv format), captions.csv (howto100m), long_coin.json (coin),
                     vlp.csv (howto100m), vlp_htm_align.json (htm_align)
  videos/{{actions,captions,long}}/{{train,val}}/*.mp4, videos/vlp/{{train,val,align}}/*.mp4
Video root for every index: {out}   (build_dataloader(index_path, root={out}, split="train"|"val"))
"""


def describe(out, size: str = "default") -> str:
    sz = SIZES[size]
    return LAYOUT.format(
        out=out,
        size=sz.size,
        frames=sz.frames,
        fps=FPS,
        a_train=sz.actions[0],
        a_val=sz.actions[1],
        c_train=sz.captions[0],
        c_val=sz.captions[1],
        l_train=sz.long[0],
        l_val=sz.long[1],
        v_train=sz.vlp[0],
        v_val=sz.vlp[1],
        v_align=sz.vlp[2],
        v_seg="{}-{}".format(*sz.vlp_segments),
        v_frames="{}-{}".format(*sz.vlp_seg_frames),
        jitter=JITTER_S,
    )
