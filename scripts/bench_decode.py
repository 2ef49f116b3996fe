"""Decoder backends side by side: clips/s per core for each backend on the same clips, one process,
one thread, in rounds (median), as the loader decodes them (decode-time resize to short side 256).

    python scripts/bench_decode.py --json docs/bench_decode.json         # CPU backends
    python scripts/bench_decode.py --gpu --json gpu_decode.json          # torchcodec CPU vs CUDA

``--gpu`` needs only torch and torchcodec (the lent GPU machine has none of our other dependencies):
it writes its videos with torchcodec's encoder and calls torchcodec directly.
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

# name: (width, height, frames, keyframe interval, sampler, frames per clip)
CASES = {
    "320p dense 16": (568, 320, 125, 125, "dense", 16),
    "720p dense 16": (1280, 720, 125, 125, "dense", 16),
    "320p long uniform 64": (568, 320, 1000, 125, "uniform", 64),
    "320p long uniform 256": (568, 320, 1000, 125, "uniform", 256),
    "256p g16 long uniform 256": (454, 256, 1000, 16, "uniform", 256),
}

GPU_CASES = ("320p dense 16", "720p dense 16", "320p long uniform 256")  # videos written there: few


def synth_frames(w: int, h: int, n: int, seed: int) -> np.ndarray:
    """A textured scene panning slowly with a moving bright box (compresses like footage, not noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // 16 + 6, w // 16 + 6, 3), dtype=np.uint8)
    tex = np.kron(coarse, np.ones((16, 16, 1), np.uint8))[: h + 64, : w + 64]
    tex = (tex // 2 + rng.integers(0, 40, tex.shape, dtype=np.uint8)).astype(np.uint8)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = tex[(i // 2) % 64 : (i // 2) % 64 + h, i % 64 : i % 64 + w]
        x = (i * 7) % max(1, w - 80)
        out[i, h // 3 : h // 3 + 60, x : x + 80] = 240
    return out


def write(path: Path, w: int, h: int, n: int, gop: int) -> Path:
    """libx264 at 25 fps, written with PyAV where it is installed, else with torchcodec's encoder."""
    if path.exists():
        return path
    frames = synth_frames(w, h, n, seed=n + w)
    tmp = path.with_suffix(".part.mp4")
    try:
        from data_index.videowrite import write_video

        write_video(tmp, frames, 25.0, gop=gop, crf=23)
    except ImportError:
        import torch
        from torchcodec.encoders import VideoEncoder

        enc = VideoEncoder(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), frame_rate=25.0)
        opts = {"g": gop, "keyint_min": gop, "sc_threshold": 0}
        enc.to_file(
            str(tmp), codec="libx264", pixel_format="yuv420p", crf=23, preset="veryfast", extra_options=opts
        )
    os.replace(tmp, path)
    return path


def clip_indices(sampler: str, n: int, t: int, k: int) -> np.ndarray:
    """The k-th timed clip's frames: dense (t every 4 frames from a spread start) or uniform."""
    if sampler == "dense":
        start = (k * 37) % max(1, n - 4 * t)
        return start + 4 * np.arange(t)
    seg = n / t
    return np.minimum((np.arange(t) * seg + (k % 7 + 0.5) * seg / 7).astype(np.int64), n - 1)


def timed(fn, clips: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``clips`` calls of fn(k)."""
    c0, w0 = time.process_time(), time.perf_counter()
    for k in range(clips):
        fn(k)
    return time.process_time() - c0, time.perf_counter() - w0


def cpu_backends(args, videos) -> list[dict]:
    from turbo_ds.data.backends.choice import SPEED_ORDER, probe
    from turbo_ds.data.decode import decode_frames, scaled_size

    backends = [b for b in (args.backends.split(",") if args.backends else SPEED_ORDER) if probe(b) is None]
    cpu: dict[tuple[str, str], list[float]] = {}
    for b in backends:  # warm-up: first-call costs (libraries, codec tables) stay out of the rounds
        decode_frames(
            str(videos["320p dense 16"]), [0, 1], backend=b, num_frames=2, size=(454, 256), fallback=False
        )
    for r in range(args.rounds):
        for case, (w, h, n, _gop, sampler, t) in CASES.items():
            size = scaled_size(w, h, 256)
            for b in backends:
                video = str(videos[case])

                def one(k, b=b, video=video, sampler=sampler, n=n, t=t, size=size):
                    idx = clip_indices(sampler, n, t, k)
                    decode_frames(video, idx, backend=b, num_frames=n, size=size, fallback=False)

                c, s = timed(one, args.clips)
                cpu.setdefault((case, b), []).append(args.clips / c)
                print(
                    f"round {r + 1}: {case:<26} {b:<10} {args.clips / c:7.2f} clips/s per core (wall {args.clips / s:.2f})",
                    flush=True,
                )
    rows = [
        {"case": case, "backend": b, "clips_per_cpu_s": statistics.median(v), "rounds": v}
        for (case, b), v in cpu.items()
    ]
    print(f"\n{'case':<26} " + " ".join(f"{b:>11}" for b in backends))
    for case in CASES:
        rates = {r["backend"]: r["clips_per_cpu_s"] for r in rows if r["case"] == case}
        print(f"{case:<26} " + " ".join(f"{rates[b]:>11.2f}" for b in backends))
    return rows


def gpu_compare(args, videos) -> list[dict]:
    """torchcodec on the CPU (one thread) against its CUDA decoder, same frames; also how far apart the
    two decoders' pixels are (NVDEC's colour conversion differs slightly from swscale's)."""
    import torch
    from torchcodec.decoders import VideoDecoder

    rows = []
    for case, (_w, _h, n, _gop, sampler, t) in CASES.items():
        if case not in GPU_CASES:
            continue
        out = {}
        for device in ("cpu", "cuda"):

            def decode(k, device=device, video=str(videos[case]), sampler=sampler, n=n, t=t):
                d = VideoDecoder(video, seek_mode="exact", num_ffmpeg_threads=1, device=device)
                frames = d.get_frames_at(clip_indices(sampler, n, t, k).tolist()).data
                if device == "cuda":
                    torch.cuda.synchronize()
                return frames

            decode(0)  # warm-up: CUDA context, NVDEC session
            _, wall = timed(decode, args.clips)
            out[device] = (args.clips / wall, decode(0))
        diff = (out["cpu"][1].float() - out["cuda"][1].cpu().float()).abs().mean().item()
        rows.append(
            {
                "case": case,
                "cpu_clips_per_s": out["cpu"][0],
                "cuda_clips_per_s": out["cuda"][0],
                "mean_abs_diff": diff,
            }
        )
        print(
            f"{case:<26} cpu {out['cpu'][0]:7.2f} clips/s  cuda {out['cuda'][0]:7.2f} clips/s  |cpu-cuda| {diff:.2f}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=6, help="clips timed per case, backend and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", default=None, help="comma-separated; default: every one that works here")
    p.add_argument("--gpu", action="store_true", help="torchcodec CPU vs CUDA instead of the CPU backends")
    p.add_argument("--cache", default="/tmp/turbo_ds_bench_decode", help="where the test videos are kept")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    root = Path(args.cache)
    root.mkdir(parents=True, exist_ok=True)
    cases = {c: v for c, v in CASES.items() if c in GPU_CASES or not args.gpu}
    videos = {
        case: write(root / f"{w}x{h}_{n}f_g{gop}.mp4", w, h, n, gop)
        for case, (w, h, n, gop, *_) in cases.items()
    }
    rows = gpu_compare(args, videos) if args.gpu else cpu_backends(args, videos)
    if args.json:
        meta = {
            "command": "python scripts/bench_decode.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        for name in ("torchcodec", "decord", "av"):
            try:
                meta[name] = __import__(name).__version__
            except Exception:
                meta[name] = None
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
