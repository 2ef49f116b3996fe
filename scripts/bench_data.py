"""Data loading benchmark: clips/s through the real Dataset + DataLoader, against the naive way.

Writes test videos (~720p and ~320p, 5 s at 25 fps, keyframe every 5 s like web video, and long ~320p
videos), builds their indexes with the csv builder, transcodes the 720p set with `data_index transcode`
(short side 256, keyframe every 16 frames), then measures every configuration in rounds, side by side
in one process so machine noise hits them alike, and reports the median round.

    python scripts/bench_data.py --workers 2 --json bench_data.json

"naive" = what VideoMAE's loader does: open decord at full resolution, ``get_batch`` the sampled
frames, then resize/crop (same uint8 transforms as ours) in the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from data_index.builders import build
from data_index.cli import main as data_index_main
from data_index.videowrite import synthetic_frames, write_video
from turbo_ds.data import build_dataloader
from turbo_ds.data.sampling import dense_clip_indices
from turbo_ds.data.schema import VideoIndex, write_index
from turbo_ds.data.transforms import ClipTransform, to_tchw


def make_set(root: Path, name: str, w: int, h: int, n_videos: int, n_frames: int, gop: int) -> Path:
    index = root / f"{name}.parquet"
    if index.exists():
        return index
    ann = root / f"{name}.csv"
    rows = ["path,label"]
    for i in range(n_videos):
        rel = f"{name}/v{i:03d}.mp4"
        write_video(root / rel, synthetic_frames(w, h, n_frames, i), 25, gop=gop, preset="veryfast", crf=23)
        rows.append(f"{rel},{i % 4}")
    ann.write_text("\n".join(rows) + "\n")
    build("csv", [ann], root, index, workers=2)
    return index


class NaiveDataset(Dataset):
    """VideoMAE-style: full-resolution decord decode of the sampled frames, then resize + crop."""

    def __init__(self, index_path, num_frames, stride, img_size, uniform=False):
        self.index = VideoIndex(index_path)
        self.num_frames, self.stride, self.uniform = num_frames, stride, uniform
        self.tf = ClipTransform(img_size=img_size, train=False)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        import decord

        from turbo_ds.data.sampling import uniform_segment_indices

        row = self.index[i % len(self.index)]
        vr = decord.VideoReader(row["abs_path"], num_threads=1, ctx=decord.cpu(0))
        n = len(vr)
        rng = np.random.default_rng(i)
        if self.uniform:
            idx = uniform_segment_indices(n, self.num_frames, rng)
        else:
            idx = dense_clip_indices(n, self.num_frames, self.stride, rng)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        del vr
        return {"video": self.tf(to_tchw(frames))[0], "label": row["label"]}


def time_loader(loader, clips: int, workers: int) -> float:
    """Steady-state clips per second: first drain what the workers prefetched while starting up
    (``workers * prefetch_factor`` batches + 1), then time ``clips`` more."""

    def batches():
        while True:
            yield from loader

    it = batches()
    for _ in range(max(1, workers) * 2 + 1):
        next(it)
    done, t0 = 0, time.perf_counter()
    while done < clips:
        done += len(next(it)["label"])
    return done / (time.perf_counter() - t0)


def naive_loader(index, args, num_frames, stride, uniform=False):
    ds = NaiveDataset(index, num_frames, stride, args.img_size, uniform)
    return DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        prefetch_factor=2 if args.workers > 0 else None,
    )


def turbo_loader(index, args, backend, sampler="dense", num_frames=16, stride=4):
    return build_dataloader(
        index,
        split="train",
        sampler=sampler,
        num_frames=num_frames,
        stride=stride if sampler == "dense" else None,
        img_size=args.img_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        backend=backend,
        drop_last=False,
        seed=0,
    )


def repeated(index: Path, times: int) -> Path:
    """The same videos listed ``times`` times, so one epoch spans many batches."""
    out = index.with_name(index.stem + f".x{times}.parquet")
    if not out.exists():
        rows = pq.read_table(index).to_pylist()
        write_index([{**r, "video_id": f"{r['video_id']}_{k}"} for k in range(times) for r in rows], out)
    return out


# --------------------------------------------------------------------------- web-like videos (--suite web)

TURBO_VIT_B_CLIPS_PER_S = 280  # VideoMAE-B at 90% drop, one A100 fed by GPU decoding (V-SWIFT's figure)


def with_captions(index: Path, every_s: float = 4.0, length_s: float = 3.0) -> Path:
    """The index with a caption every ``every_s`` seconds of each video (HowTo100M-like narration)."""
    out = index.with_name(index.stem + ".captions.parquet")
    if not out.exists():
        rows = pq.read_table(index).to_pylist()
        for r in rows:
            starts = np.arange(0.5, max(r["duration_s"] - length_s, 0.5), every_s)
            r["captions"] = [
                {"start_s": t, "end_s": t + length_s, "text": f"step {i}"} for i, t in enumerate(starts)
            ]
        write_index(rows, out)
    return out


def caption_loader(index, args, backend, grouped: bool):
    """Video-text training clips: 16 frames every 4 around random captions, 4 clips per video in one
    batch (group_by_video); ``grouped``: decoded in one call per video (data.decode_once), else clip
    by clip. The same clips either way."""
    return build_dataloader(
        index,
        split="train",
        sampler="caption",
        num_frames=16,
        stride=4,
        img_size=args.img_size,
        batch_size=4,
        num_workers=args.workers,
        backend=backend,
        samples_per_video=4,
        group_by_video=True,
        decode_once=grouped,
        seed=0,
    )


def available_backends() -> list[str]:
    from turbo_ds.data import decode

    names = [b for b in ("torchcodec", "decord", "pyav") if b in decode.BACKENDS]
    out = []
    for b in names:
        try:
            __import__({"pyav": "av"}.get(b, b))
            out.append(b)
        except Exception:  # noqa: BLE001 - a backend that cannot import is not measured
            print(f"backend {b}: not importable here, not measured")
    return out


def web_sets(args, root: Path) -> dict[str, Path]:
    """5-minute 480p H.264 videos with a keyframe every 250 frames (YouTube's), and the same transcoded
    to a keyframe every 16 frames: {source name: index}."""
    n_frames = int(args.web_minutes * 60 * 25)
    web = make_set(root, "web480p", 854, 480, args.web_videos, n_frames, gop=250)
    short = root / "web480p_g16" / "web480p.parquet"
    if not short.exists():
        data_index_main(
            ["transcode", str(web), "--root", str(root), "--out-root", str(short.parent)]
            + ["--short-side", "480", "--gop", "16", "--workers", str(max(1, args.workers))]
        )
    return {"web g250": web, "web g16": short}


def web_configs(args, root: Path) -> dict:
    """Per web source and backend: caption clips (one by one and grouped per video), 64 and 256 uniform
    frames over the whole video."""
    configs = {}
    for source, index in web_sets(args, root).items():
        captions = repeated(with_captions(index), 4)
        long_index = repeated(index, 8)
        for backend in available_backends():
            # The reference of each row ("vs ref"): today's path, decord one clip at a time; a grouped
            # row's is the same backend ungrouped (what decoding a video once buys).
            today = None if backend == "decord" else f"{source} decord caption 16f"
            for grouped in (False, True):
                name = f"{source} {backend} caption 16f" + (" grouped" if grouped else "")
                configs[name] = (
                    lambda c=captions, b=backend, g=grouped: caption_loader(c, args, b, g),
                    source,
                    backend,
                    16,
                    args.clips,
                    f"{source} {backend} caption 16f" if grouped else today,
                )
            for t in (64, 256):
                configs[f"{source} {backend} uniform {t}f"] = (
                    lambda i=long_index, b=backend, t=t: turbo_loader(i, args, b, "uniform", t),
                    source,
                    backend,
                    t,
                    args.long_clips,
                    None if backend == "decord" else f"{source} decord uniform {t}f",
                )
    return configs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite",
        default="classic",
        choices=["classic", "web", "floor"],
        help="classic: 5 s clips and 40 s videos against the naive loader; web: 5-minute web-like videos "
        "per backend (caption clips, 64 / 256 uniform frames); floor: where a frame-exact decode of 64 / "
        "256 uniform frames of the web videos spends its time, and the least it could take",
    )
    p.add_argument("--web-minutes", type=float, default=5.0, help="web suite: video length")
    p.add_argument("--web-videos", type=int, default=3, help="web suite: videos written")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--clips", type=int, default=16, help="clips timed per configuration and round")
    p.add_argument("--long-clips", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--cache", default="/tmp/turbo_ds_bench_data", help="where the test videos are kept")
    p.add_argument("--json", default=None)
    p.add_argument("--only", default=None, help="comma-separated subset of configuration names")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    root = Path(args.cache)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.suite == "floor":
        return run_floor(web_sets(args, root), args, argv)
    if args.suite == "web":
        configs = web_configs(args, root)
        print(f"videos ready in {time.time() - t0:.0f}s under {root}", flush=True)
        return run_configs(configs, args, argv)
    hd = make_set(root, "720p", 1280, 720, args.videos, 125, gop=125)
    sd = make_set(root, "320p", 568, 320, args.videos, 125, gop=125)
    lg = make_set(root, "long320p", 568, 320, 2, 1000, gop=125)
    tc = root / "tc720" / "720p.parquet"
    if not tc.exists():
        data_index_main(
            [
                "transcode",
                str(hd),
                "--root",
                str(root),
                "--out-root",
                str(root / "tc720"),
                "--short-side",
                "256",
                "--gop",
                "16",
                "--workers",
                "2",
            ]
        )
    tcl = root / "tclong" / "long320p.parquet"
    if not tcl.exists():
        data_index_main(
            [
                "transcode",
                str(lg),
                "--root",
                str(root),
                "--out-root",
                str(root / "tclong"),
                "--short-side",
                "256",
                "--gop",
                "16",
                "--workers",
                "2",
            ]
        )
    hd, sd, lg, tc, tcl = (repeated(x, 20) for x in (hd, sd, lg, tc, tcl))
    print(f"videos ready in {time.time() - t0:.0f}s under {root}", flush=True)

    # name: (make loader, source, backend, frames, clips timed, naive reference)
    def naive(index, t, stride, uniform=False):
        return lambda: naive_loader(index, args, t, stride, uniform)

    def turbo(index, backend, sampler="dense", t=16):
        return lambda: turbo_loader(index, args, backend, sampler, t)

    c, lc = args.clips, args.long_clips
    configs = {
        "naive 720p": (naive(hd, 16, 4), "720p", "decord full-res", 16, c, None),
        "turbo 720p decord": (turbo(hd, "decord"), "720p", "decord", 16, c, "naive 720p"),
        "turbo 720p pyav": (turbo(hd, "pyav"), "720p", "pyav", 16, c, "naive 720p"),
        "turbo 720p transcoded": (turbo(tc, "decord"), "720p->256 g16", "decord", 16, c, "naive 720p"),
        "naive 320p": (naive(sd, 16, 4), "320p", "decord full-res", 16, c, None),
        "turbo 320p decord": (turbo(sd, "decord"), "320p", "decord", 16, c, "naive 320p"),
        "turbo 320p pyav": (turbo(sd, "pyav"), "320p", "pyav", 16, c, "naive 320p"),
        "naive long 64f": (naive(lg, 64, 1, True), "320p 1000f", "decord full-res", 64, lc, None),
        "turbo long 64f": (
            turbo(lg, "decord", "uniform", 64),
            "320p 1000f",
            "decord",
            64,
            lc,
            "naive long 64f",
        ),
        "turbo long 64f transcoded": (
            turbo(tcl, "decord", "uniform", 64),
            "->256 g16",
            "decord",
            64,
            lc,
            "naive long 64f",
        ),
        "naive long 256f": (naive(lg, 256, 1, True), "320p 1000f", "decord full-res", 256, lc, None),
        "turbo long 256f": (
            turbo(lg, "decord", "uniform", 256),
            "320p 1000f",
            "decord",
            256,
            lc,
            "naive long 256f",
        ),
        "turbo long 256f transcoded": (
            turbo(tcl, "decord", "uniform", 256),
            "->256 g16",
            "decord",
            256,
            lc,
            "naive long 256f",
        ),
    }
    return run_configs(configs, args, argv)


def run_configs(configs: dict, args, argv) -> int:
    """Every configuration once per round (side by side: machine noise hits them alike), the median."""
    if args.only:
        keep = set(args.only.split(","))
        configs = {k: v for k, v in configs.items() if k in keep}
    results: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, (make, _src, _be, _t, clips, _ref) in configs.items():
            rate = time_loader(make(), clips, args.workers)
            results[name].append(rate)
            print(f"round {r + 1}: {name:<28} {rate:7.2f} clips/s", flush=True)

    rows = []
    for name, (_, source, backend, frames, _, ref) in configs.items():
        rate = statistics.median(results[name])
        base = rate if ref is None else statistics.median(results[ref]) if ref in results else None
        rows.append(
            {
                "config": name,
                "source": source,
                "backend": backend,
                "frames": frames,
                "clips_per_s": rate,
                "clips_per_s_per_worker": rate / max(1, args.workers),
                "rounds": results[name],
                "speedup_vs_ref": rate / base if base else None,
                "cores_per_gpu": TURBO_VIT_B_CLIPS_PER_S / max(rate / max(1, args.workers), 1e-9),
            }
        )
    print(
        f"\n{'config':<40} {'source':<17} {'backend':<16} {'T':>4} {'clips/s':>8} {'/worker':>8} {'vs ref':>8}"
        f" {'cores/GPU':>9}"
    )
    for r in rows:
        sp = f"{r['speedup_vs_ref']:.2f}x" if r["speedup_vs_ref"] else "-"
        print(
            f"{r['config']:<40} {r['source']:<17} {r['backend']:<16} {r['frames']:>4} {r['clips_per_s']:>8.2f} "
            f"{r['clips_per_s_per_worker']:>8.2f} {sp:>8} {r['cores_per_gpu']:>9.0f}"
        )
    print(
        "vs ref: against the naive loader (classic) or today's decord path (web; grouped rows: the same "
        f"backend clip by clip). cores/GPU: cores at this rate per core to feed {TURBO_VIT_B_CLIPS_PER_S} "
        "clips/s (Turbo ViT-B, one GPU)"
    )
    meta = {
        "command": "python scripts/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "rounds": args.rounds,
        "suite": args.suite,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


def run_floor(sets: dict[str, Path], args, argv) -> int:
    """Per web source and 64 / 256 uniform frames, in CPU seconds: today's decord decode, PyAV's, and the
    stages and floor of a frame-exact decode (``turbo_ds.measure.decode_work``), median of the rounds
    (the same frames for every decoder in a round)."""
    from turbo_ds.data.decode import decode_frames, scaled_size
    from turbo_ds.data.sampling import uniform_segment_indices
    from turbo_ds.measure.decode_work import decode_work, reference_frames

    short_side = ClipTransform(args.img_size, train=True).decode_short_side
    rows = []
    for source, index_path in sets.items():
        index = VideoIndex(index_path)
        videos = [index[i] for i in range(min(len(index), args.web_videos))]
        refs_of = {
            v["abs_path"]: reference_frames(v["abs_path"]) for v in videos
        }  # a whole decode each: once
        for t in (64, 256):
            samples = []
            for v in videos:
                path = v["abs_path"]
                refs = refs_of[path]
                size = scaled_size(v["width"], v["height"], short_side)
                for r in range(args.rounds):
                    idx = uniform_segment_indices(v["num_frames"], t, np.random.default_rng(r))
                    timed = {}
                    for backend in ("decord", "pyav"):
                        t0 = time.process_time()  # CPU seconds: what a core pays (decord runs 2 threads)
                        decode_frames(
                            path, idx, backend=backend, num_frames=v["num_frames"], size=size, fallback=False
                        )
                        timed[backend] = time.process_time() - t0
                    samples.append(
                        {**decode_work(path, idx, size, refs), **{f"{b}_s": s for b, s in timed.items()}}
                    )
                print(f"{source} {t}f: {len(samples)} samples", flush=True)
            row = {k: statistics.median(s[k] for s in samples) for k in samples[0] if k != "av_version"}
            row.update(source=source, frames_wanted=t, size=list(size), samples=len(samples))
            row["pyav_vs_decord"] = row["decord_s"] / row["pyav_s"]
            row["floor_vs_decord"] = row["decord_s"] / row["floor_s"]
            row["floor_without_scan_vs_decord"] = row["decord_s"] / row["floor_without_scan_s"]
            rows.append(row)
    print(
        f"\n{'source':<9} {'T':>4} {'frames':>6} {'refs':>5} {'decoded':>7} {'minimum':>7} {'scan s':>7}"
        f" {'decode s':>8} {'convert s':>9} {'pyav s':>7} {'decord s':>8} {'floor s':>7} {'pyav':>6} {'floor':>6}"
        f" {'no scan':>7}"
    )
    for r in rows:
        print(
            f"{r['source']:<9} {r['frames_wanted']:>4} {r['frames']:>6.0f} {r['references']:>5.0f} {r['decoded']:>7.0f}"
            f" {r['minimum']:>7.0f} {r['scan_s']:>7.3f} {r['decode_s']:>8.3f} {r['convert_s']:>9.3f}"
            f" {r['pyav_s']:>7.3f} {r['decord_s']:>8.3f} {r['floor_s']:>7.3f} {r['pyav_vs_decord']:>5.2f}x"
            f" {r['floor_vs_decord']:>5.2f}x {r['floor_without_scan_vs_decord']:>6.2f}x"
        )
    print(
        "CPU seconds per video (median; the process's, all threads); decoded: frames PyAV decodes; minimum: what any frame-exact "
        "decoder must (the reference frames from each wanted frame's keyframe up to it, and the frame); "
        "floor = scan + minimum x decode s per decoded frame + convert; the last three columns: decord's "
        "time over PyAV's, the floor's, the floor's without the scan (a frame table stored in the index)"
    )
    if args.json:
        meta = {
            "command": "python scripts/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
