"""NVDEC through NVIDIA's PyNvVideoCodec, measured where our torchcodec cannot load (the lent GPU machine:
its own torch, no FFmpeg libraries): ``prepare`` (here) writes web-like H.264 videos, every sample's
frame indices and reference thumbnails; ``run`` (there; torch and PyNvVideoCodec only) decodes the
samples on the GPU, times them and checks every frame against the reference. Driven by
``scripts/bench_nvdec.py``; numpy alone at import, so the lent machine can import it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 854, 480, 25, 60
GOPS = (250, 16)
THUMB = (18, 32)  # (h, w) of the gray thumbnails frames are identified by
SHORT_SIDE = 256  # the decode size the loader asks for at 224 px
SAMPLINGS = {"caption 16f": (16, 4, 8), "uniform 64f": (64, None, 4), "uniform 256f": (256, None, 2)}


def thumbnails(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 18, 32) float32 gray block means, each standardised (zero mean, unit
    deviation): NVDEC's YUV->RGB (matrix, range) differs from swscale's, which moves every pixel of a
    frame alike, but not which frame it is."""
    t, h, w, _ = frames.shape
    bh, bw = h // THUMB[0], w // THUMB[1]
    gray = frames[:, : bh * THUMB[0], : bw * THUMB[1]].astype(np.float32).mean(axis=-1)
    thumbs = gray.reshape(t, THUMB[0], bh, THUMB[1], bw).mean(axis=(2, 4))
    flat = thumbs.reshape(t, -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / (flat.std(axis=1, keepdims=True) + 1e-6)
    return flat.reshape(thumbs.shape)


def nearest_frames(thumbs: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each decoded thumbnail, the reference frame nearest to it and the mean absolute distance."""
    dist = np.abs(thumbs[:, None] - reference[None]).mean(axis=(2, 3))
    return dist.argmin(axis=1), dist.min(axis=1)


def sample_indices(num_frames: int, seed: int = 0) -> dict[str, list[list[int]]]:
    """Every sampling's frame indices, drawn by the loader's own samplers: caption-like clips (16
    frames every 4 at random starts) and uniform frames (one at a random place in each of T equal
    segments). Called by ``prepare`` only: ``run`` reads them from samples.json."""
    from turbo_ds.data.sampling import dense_clip_indices, uniform_segment_indices

    rng = np.random.default_rng(seed)
    out = {}
    for name, (t, stride, count) in SAMPLINGS.items():
        out[name] = [
            (
                dense_clip_indices(num_frames, t, stride, rng)
                if stride
                else uniform_segment_indices(num_frames, t, rng)
            ).tolist()
            for _ in range(count)
        ]
    return out


def prepare(folder: Path, seconds: int = SECONDS) -> None:
    import av

    from data_index.videowrite import synthetic_frames, write_video

    folder.mkdir(parents=True, exist_ok=True)
    n = FPS * seconds
    meta = {"videos": {}, "width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": n}
    for gop in GOPS:
        path = folder / f"web480p_g{gop}.mp4"
        write_video(path, synthetic_frames(WIDTH, HEIGHT, n, seed=0), FPS, gop=gop, preset="veryfast", crf=23)
        with av.open(str(path)) as c:  # a thumbnail per frame as it is decoded (not 1.8 GB of frames)
            thumbs = np.concatenate(
                [thumbnails(f.to_ndarray(format="rgb24")[None]) for f in c.decode(video=0)]
            )
        np.save(
            folder / f"web480p_g{gop}.thumbs.npy", thumbs.astype(np.float16)
        )  # it travels: half the bytes
        # How far apart neighbouring frames are: a decoded frame counts as the one nearest to it.
        margin = float(np.median(np.abs(thumbs[1:] - thumbs[:-1]).mean(axis=(1, 2))))
        meta["videos"][path.name] = {
            "gop": gop,
            "frames": len(thumbs),
            "bytes": path.stat().st_size,
            "neighbour_distance": margin,
        }
        print(
            f"prepare: {path} ({path.stat().st_size / 2**20:.1f} MiB, {len(thumbs)} frames; "
            f"neighbouring thumbnails {margin:.3f} apart)",
            flush=True,
        )
    meta["samples"] = sample_indices(n)
    (folder / "samples.json").write_text(json.dumps(meta))


def run(folder: Path, rounds: int) -> int:
    import torch
    import torch.nn.functional as F

    try:
        import PyNvVideoCodec as nvc
    except Exception as e:  # noqa: BLE001 - any reason it cannot load is the one line to print
        print(f"bench_nvdec: PyNvVideoCodec cannot load here ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_nvdec: torch sees no CUDA GPU here", file=sys.stderr)
        return 2

    meta = json.loads((folder / "samples.json").read_text())
    device = torch.device("cuda", 0)
    scale = SHORT_SIDE / min(meta["width"], meta["height"])
    size = (SHORT_SIDE, int(round(meta["width"] * scale / 2)) * 2)

    def decode(path: str, idx: list[int]) -> torch.Tensor:
        dec = nvc.SimpleDecoder(
            path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB
        )
        frames = dec.get_batch_frames_by_index(idx)
        clip = torch.stack([torch.from_dlpack(f) for f in frames]).to(device)  # (T, H, W, 3) uint8
        return clip

    rows = []
    for name, info in meta["videos"].items():
        path = str(folder / name)
        reference = np.load(folder / name.replace(".mp4", ".thumbs.npy")).astype(np.float32)
        decode(path, [0])  # the first decoder session is the slow one: not timed
        for sampling, clips in meta["samples"].items():
            wrong, worst, times = 0, 0.0, []
            for r in range(rounds):
                seconds = 0.0
                for idx in clips:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    clip = decode(path, idx)
                    resized = F.interpolate(
                        clip.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True
                    )
                    resized = resized.round_().clamp_(0, 255).to(torch.uint8)
                    torch.cuda.synchronize()
                    seconds += time.perf_counter() - t0
                    if r == 0:  # exactness on the full-size frames, once, untimed
                        asked = np.asarray(list(dict.fromkeys(idx)))  # the decoder drops repeats
                        found, dist = nearest_frames(thumbnails(clip.cpu().numpy()), reference)
                        wrong += int((found != asked).sum()) + abs(len(found) - len(asked))
                        worst = max(worst, float(dist.max()))
                times.append(seconds)
            rate = len(clips) / float(np.median(times))
            rows.append(
                {
                    "video": name,
                    "gop": info["gop"],
                    "sampling": sampling,
                    "clips": len(clips),
                    "rounds": rounds,
                    "clips_per_s": rate,
                    "frames_per_s": rate * len(clips[0]),
                    "wrong_frames": wrong,
                    "frames_checked": sum(len(c) for c in clips),
                    "max_thumbnail_distance": worst,
                }
            )
            r = rows[-1]
            print(
                f"nvdec g{r['gop']:<4} {sampling:<13} {rate:8.2f} clips/s {r['frames_per_s']:9.1f} frames/s  "
                f"wrong {wrong}/{r['frames_checked']}  max distance {worst:.2f}",
                flush=True,
            )
    facts = {"pynvvideocodec": getattr(nvc, "__version__", "?"), "torch": torch.__version__}
    facts["gpu"] = torch.cuda.get_device_name(0)
    print("nvdec_json: " + json.dumps({"meta": facts, "rows": rows}))
    return 1 if any(r["wrong_frames"] for r in rows) else 0
