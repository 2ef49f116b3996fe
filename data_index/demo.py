"""The embedded demo dataset: procedurally generated, deterministic by seed, real mp4 files.

A digit (drawn with Pillow) moves over a textured, noisy background, wrapping around the frame
edges, so its position in any single frame is uniform whatever the class: only motion tells the
direction apart. Three parts, each indexed by the same builder code as a real dataset:

- ``actions``: one direction per clip (4 classes: left/right/up/down) -> ``csv`` builder;
- ``captions``: the same kind of clips with a sentence (digit, colour, direction) -> ``howto100m``;
- ``long``: 4 sub-actions (every direction once) whose *order* is the activity class, segment
  boundaries and one caption per segment with timestamps -> ``coin`` builder.
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


SIZES = {
    "default": DemoSize(64, 24, (20, 28), (384, 96), (192, 48), (64, 32)),
    "tiny": DemoSize(32, 16, (8, 10), (8, 4), (4, 2), (4, 2)),
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
    rng: np.random.Generator, size: int, directions: list[str], seg_lengths: list[int]
) -> tuple[np.ndarray, dict]:
    """(T, size, size, 3) uint8: one digit moving through ``directions`` for ``seg_lengths`` frames."""
    digit = int(rng.integers(10))
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    glyph = _glyph(digit, size)
    gh, gw = glyph.shape
    layer = np.zeros((size, size), np.float32)
    layer[:gh, :gw] = glyph
    bg = _background(rng, size)
    speed = rng.uniform(2.5, 3.5) * size / 64
    pos = rng.uniform(0, size, size=2)  # (x, y)
    col = np.array(COLOURS[colour], np.float32)
    frames = []
    for direction, n in zip(directions, seg_lengths, strict=True):
        vx, vy = _VEL[direction]
        for _ in range(n):
            mask = np.roll(layer, (int(round(pos[1])) % size, int(round(pos[0])) % size), axis=(0, 1))[
                ..., None
            ]
            frame = bg * (1 - mask) + col * mask + rng.normal(0, 8, size=(size, size, 3))
            frames.append(np.clip(frame, 0, 255).astype(np.uint8))
            pos += (vx * speed, vy * speed)
    return np.stack(frames), {"digit": digit, "colour": colour}


def _sentence(rng: np.random.Generator, digit: int, colour: str, direction: str) -> str:
    templates = (
        "a {c} {d} moves {dir}",
        "the {c} digit {d} slides to the {dir}",
        "a {c} number {d} travelling {dir} over a noisy background",
    )
    where = {"left": "left", "right": "right", "up": "up", "down": "down"}[direction]
    t = templates[int(rng.integers(len(templates)))]
    return (
        t.format(c=colour, d=digit, dir=where)
        .replace("to the up", "upwards")
        .replace("to the down", "downwards")
    )


def _job(job: dict) -> dict:
    """Render and write one video; returns its annotation record."""
    rng = np.random.default_rng(job["seed_key"])
    sz: DemoSize = job["size"]
    kind = job["kind"]
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
    """Write the demo videos, annotation files and the three indexes under ``out``; returns
    {"actions": path, "captions": path, "long": path} (index files; their video root is ``out``)."""
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
    workers = workers or min(8, os.cpu_count() or 1)
    # Encode in clean child processes (forkserver, this module preloaded), not forks of a parent that may
    # hold torch/decord threads.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["data_index.demo"])
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        recs = list(
            tqdm(pool.map(_job, jobs, chunksize=8), total=len(jobs), desc="demo videos", disable=None)
        )
    by_kind = {k: [r for r in recs if r["kind"] == k] for k in n_classes}

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

    probe_workers = min(workers, 4)
    paths = {
        "actions": out / "actions.parquet",
        "captions": out / "captions.parquet",
        "long": out / "long.parquet",
    }
    build("csv", [ann_actions], out, paths["actions"], workers=probe_workers)
    build("howto100m", [ann_captions], out, paths["captions"], workers=probe_workers)
    build("coin", [ann_long], out, paths["long"], workers=probe_workers)
    return paths


LAYOUT = """\
{out}/
  actions.parquet    action clips ({a_train} train / {a_val} val), 4 classes by motion direction
                     (0 left, 1 right, 2 up, 3 down); {size}x{size} px, {frames} frames @ {fps} fps
  captions.parquet   captioned clips ({c_train} train / {c_val} val), one sentence each, label -1
  long.parquet       long videos ({l_train} train / {l_val} val), 4 activities = orders of 4 sub-actions,
                     segments (start_s, end_s, direction) + one caption per segment
  *.errors.parquet   videos that failed to index (empty for the demo)
  annotations/       actions.csv (csv format), captions.csv (howto100m), long_coin.json (coin)
  videos/{{actions,captions,long}}/{{train,val}}/*.mp4
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
    )
