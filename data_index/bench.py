"""Index scale benchmark (``scripts/bench_index.py``): build and open HowTo100M-shaped indexes.

Inputs: N videos, every one a symlink to one tiny clip written once (probing costs what a real short
clip costs, the disk holds one video), and a ``caption.json`` of N entries with ``captions`` sentences
each, written entry by entry. Each measurement runs in a fresh process: ``python -m data_index build``
(wall time, peak RSS), opening the index with an empty cache (writes the Arrow copy) and with the
cache in place, and the first batch of a caption loader; peak RSS is the largest process of each
(``wait4``), i.e. the build's main process, not its probe workers added up.

    python -m data_index.bench open|batch INDEX ROOT   # (internal) one measured child: prints JSON
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HOWTO100M = {"videos": 1_220_000, "captions": 136_000_000}
PRESETS = {  # small: minutes on 2 cores; its two largest sizes are past one chunk (1024 videos)
    "small": [200, 2000, 8000],
    "full": [20_000, 60_000, 120_000],
}
WORDS = [
    "so",
    "now",
    "we",
    "take",
    "the",
    "cup",
    "and",
    "pour",
    "some",
    "water",
    "into",
    "it",
    "then",
    "stir",
    "slowly",
    "until",
    "it",
    "looks",
    "like",
    "this",
]


def write_howto100m_inputs(folder: str | os.PathLike, n_videos: int, captions: int = 110, seed: int = 0):
    """``folder/caption.json`` and ``folder/videos/`` (symlinks, 1000 per sub-folder, to ``clip.mp4``)
    for ``n_videos`` videos of ``captions`` sentences (~50 characters, 2 s apart, like ASR lines).
    Returns (caption.json, video root). Reuses what an earlier call wrote for the same arguments."""
    from data_index.videowrite import write_video

    folder = Path(folder)
    ann, root, done = folder / "caption.json", folder / "videos", folder / "inputs.json"
    spec = {"videos": n_videos, "captions": captions, "seed": seed}
    if done.exists() and json.loads(done.read_text()) == spec:
        return ann, root
    clip = folder / "clip.mp4"
    folder.mkdir(parents=True, exist_ok=True)
    if not clip.exists():
        rng = np.random.default_rng(seed)
        write_video(clip, (rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(16)), 8.0, gop=8)
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    with open(ann, "w") as f:
        f.write("{")
        for i in range(n_videos):
            vid = f"v{i:07d}"
            sub = root / f"{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True, exist_ok=True)
            link = sub / f"{vid}.mp4"
            if not link.is_symlink():
                link.symlink_to(clip.resolve())
            picks = rng.integers(0, len(words), (captions, 9))
            text = [" ".join(words[p]) for p in picks]
            start = [round(2.0 * j, 2) for j in range(captions)]
            entry = {"start": start, "end": [s + 2.5 for s in start], "text": text}
            f.write(("," if i else "") + json.dumps(vid) + ":" + json.dumps(entry))
        f.write("}")
    done.write_text(json.dumps(spec))
    return ann, root


def measured(argv: list[str], env: dict | None = None) -> dict:
    """Run ``argv``; its wall time, peak RSS (MB, the largest process of its tree, from ``wait4``) and
    the JSON its last output line holds, if any."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{stderr[-3000:]}")
    result = {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}
    lines = stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        result.update(json.loads(lines[-1]))
    return result


def _rss_mb() -> tuple[float, float]:
    """(RSS, private RSS) in MB: the memory-mapped index's pages count in RSS but live in the page
    cache, shared by every process of the machine; private (anonymous) memory is what each one adds."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["RssAnon"].split()[0]) / 1024


def _child(mode: str, index: str, root: str) -> dict:
    """In a fresh process: open the index (``open``), or open it and take a caption loader's first
    batch (``batch``); seconds and memory (RSS, private) added, counted from after the imports."""
    import torch  # noqa: F401 (imported before the clock starts, as in a training process)

    from turbo_ds.data import build_dataloader
    from turbo_ds.data.schema import VideoIndex, write_index

    with tempfile.TemporaryDirectory() as tmp:  # pyarrow's one-time initialisation, off the clock
        os.environ["TURBO_DS_INDEX_CACHE"], cache = tmp, os.environ.get("TURBO_DS_INDEX_CACHE", "")
        write_index([{"video_id": "w", "path": "w.mp4", "split": "train"}], Path(tmp) / "w.parquet")
        VideoIndex(Path(tmp) / "w.parquet", split="train").caption_lengths()
        os.environ["TURBO_DS_INDEX_CACHE"] = cache
    before, start = _rss_mb(), time.perf_counter()
    if mode == "open":
        n = len(VideoIndex(index, root=root, split="train"))
    else:
        loader = build_dataloader(
            index,
            root=root,
            split="train",
            sampler="caption",
            batch_size=8,
            num_frames=4,
            stride=1,
            img_size=32,
            num_workers=0,
            seed=0,
        )
        n = len(next(iter(loader))["text"])
    seconds = time.perf_counter() - start
    (rss, private), (rss0, private0) = _rss_mb(), before
    return {"seconds": seconds, "rss_mb": rss - rss0, "private_mb": private - private0, "n": n}


def bench_size(folder: Path, n_videos: int, captions: int, workers: int) -> dict:
    """Every measurement for one size (inputs reused from an earlier run in ``folder``)."""
    py = sys.executable
    ann, root = write_howto100m_inputs(folder, n_videos, captions)
    index, cache = folder / "index.parquet", folder / "cache"
    build = measured(
        [py, "-m", "data_index", "build", "--format", "howto100m", "--annotations", str(ann), "--root",
         str(root), "--out", str(index), "--workers", str(workers)]
    )  # fmt: skip
    for old in cache.glob("*"):
        old.unlink()
    env = {"TURBO_DS_INDEX_CACHE": str(cache)}
    child = [py, "-m", "data_index.bench"]
    first = measured([*child, "open", str(index), str(root)], env)
    cached = measured([*child, "open", str(index), str(root)], env)
    batch = measured([*child, "batch", str(index), str(root)], env)
    arrow = sum(p.stat().st_size for p in cache.glob("*.arrow"))
    return {
        "videos": n_videos,
        "captions": n_videos * captions,
        "annotations_mb": ann.stat().st_size / 1e6,
        "build_s": build["wall_s"],
        "build_peak_rss_mb": build["peak_rss_mb"],
        "index_mb": index.stat().st_size / 1e6,
        "open_first_s": first["seconds"],
        "open_cached_s": cached["seconds"],
        "open_rss_mb": cached["rss_mb"],
        "open_private_mb": cached["private_mb"],
        "first_batch_s": batch["seconds"],
        "first_batch_rss_mb": batch["rss_mb"],
        "first_batch_private_mb": batch["private_mb"],
        "cache_mb": arrow / 1e6,
    }


COLUMNS = [  # key, header, format, noise floor (None: grows with the index, always on its line)
    ("videos", "videos", "{:,.0f}", None),
    ("captions", "captions", "{:,.0f}", None),
    ("build_s", "build s", "{:.1f}", None),
    ("build_peak_rss_mb", "build peak RSS MB", "{:.0f}", 25.0),
    ("index_mb", "index MB", "{:.1f}", None),
    ("open_first_s", "open s (first)", "{:.2f}", None),  # writes the Arrow copy
    ("open_cached_s", "open s (cached)", "{:.2f}", 0.5),
    ("open_private_mb", "open: private MB", "{:.0f}", 25.0),
    ("first_batch_s", "first caption batch s", "{:.2f}", 0.5),
    ("first_batch_private_mb", "first batch: private MB", "{:.0f}", 25.0),
    ("cache_mb", "Arrow cache MB", "{:.1f}", None),
]


def extrapolate(results: list[dict], videos: int = HOWTO100M["videos"]) -> dict:
    """Each measure at ``videos``, on the line through the two largest sizes. A measure meant to stay
    flat (a noise floor in COLUMNS) that moved by less than 20% or that floor between them is taken as
    flat: its noise, times 1.22M / the size step, is no trend."""
    a, b = sorted(results, key=lambda r: r["videos"])[-2:] if len(results) > 1 else results * 2
    out: dict = {"videos": videos, "captions": HOWTO100M["captions"], "extrapolated": True}
    for key, _, _, floor in COLUMNS[2:]:
        delta = b[key] - a[key]
        noise = None if floor is None else max(floor, 0.2 * max(abs(a[key]), abs(b[key])))
        flat = b["videos"] == a["videos"] or (noise is not None and abs(delta) <= noise)
        out[key] = (
            b[key]
            if flat
            else max(0.0, b[key] + delta / (b["videos"] - a["videos"]) * (videos - b["videos"]))
        )
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| " + " | ".join(c[1] for c in COLUMNS) + " |",
        "| " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for r in results:
        cells = [fmt.format(r[k]) for k, _, fmt, _ in COLUMNS]
        if r.get("extrapolated"):
            cells[0] = f"{cells[0]} (extrapolated)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(
    sizes: list[int], folder: Path, captions: int = 110, workers: int = 0, json_out: Path | None = None
) -> dict:
    """Measure every size (smallest first), print the table, write the JSON."""
    results = []
    for n in sorted(sizes):
        print(f"[bench_index] {n} videos x {captions} captions ...", flush=True)
        results.append(bench_size(folder / f"n{n}", n, captions, workers))
        print(table(results[-1:]), flush=True)
    report = {
        "results": results,
        "extrapolated": extrapolate(results),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "captions_per_video": captions,
        "workers": workers,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    print(table([*results, report["extrapolated"]]))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    print(json.dumps(_child(*sys.argv[1:4])))
