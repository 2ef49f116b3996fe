"""GPU decoding with NVDEC on a lent GPU machine: clips/s and frame exactness of NVIDIA's PyNvVideoCodec
on web-like H.264, for the sampling the loader does (caption clips, 64 / 256 uniform frames).

The lent machine has its own torch (2.11) and no FFmpeg libraries, so no torchcodec of ours can load
there (a torchcodec wheel fits one torch minor version). PyNvVideoCodec (MIT, on the package index)
brings its own demuxer and drives the same NVDEC hardware torchcodec's CUDA decoder does, so it
measures what GPU decoding gives. Two steps:

    python scripts/bench_nvdec.py prepare .gpu_deps/nvdec     # here (make gpu-bundle): videos + reference
    python scripts/bench_nvdec.py run .gpu_deps/nvdec         # there (scripts/gpu_check.sh, step f)

``prepare`` writes a 1-minute 854x480 H.264 video twice (a keyframe every 250 frames, and every 16),
the frame indices of every sample, and a thumbnail of every frame from a sequential PyAV decode (the
reference every backend is tested against). ``run`` needs torch and PyNvVideoCodec only: per video and
sampling it opens a decoder per sample (as the loader opens a video per sample), decodes the indices
to RGB on the GPU, resizes to short side 256 there, and checks that each frame's thumbnail is nearest
to the reference thumbnail of the frame asked for. It prints a table and one ``nvdec_json:`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from turbo_ds.measure.nvdec import SECONDS, prepare, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["prepare", "run"])
    p.add_argument("folder", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=SECONDS, help="prepare: video length")
    args = p.parse_args(argv)
    if args.mode == "prepare":
        prepare(args.folder, args.seconds)
        return 0
    if not (args.folder / "samples.json").exists():
        print(f"bench_nvdec: {args.folder}/samples.json not found: run `prepare` first", file=sys.stderr)
        return 2
    return run(args.folder, args.rounds)


if __name__ == "__main__":
    raise SystemExit(main())
