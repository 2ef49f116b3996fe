"""Helpers for data tests: tiny real videos written with PyAV, broken files, the tiny demo set.

Import fixtures with ``from video_utils import tiny_demo  # noqa: F401`` (pytest puts tests/ on the
path); the demo is generated once per session whichever module asks first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_index.videowrite import write_video

BACKENDS = ("decord", "pyav")


def make_frames(n: int = 20, h: int = 32, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 frames that differ strongly from one another (a moving bright bar over a
    frame-numbered gray level), so a wrong frame index is visible after lossy coding."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    tint = rng.integers(0, 40, size=3)
    base = np.stack([(xx * 60) // w + tint[0], (yy * 60) // h + tint[1], 0 * xx + tint[2]], -1).astype(
        np.uint8
    )
    for i in range(n):
        f = base.copy()
        f[..., 1] += np.uint8((i * 180) // max(1, n - 1))
        x = (i * 3) % (w - 8)
        f[:, x : x + 8, :] = 255
        frames[i] = f
    return frames


def write_test_video(
    path, n: int = 20, h: int = 32, w: int = 64, fps: float = 10.0, gop: int = 5, seed: int = 0
):
    frames = make_frames(n, h, w, seed)
    write_video(path, frames, fps, gop=gop, crf=10)
    return frames


def write_broken(dirpath: Path) -> dict[str, str]:
    """Broken files of each kind -> {relative path: expected reason prefix}."""
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "zero.mp4").write_bytes(b"")
    (dirpath / "text.mp4").write_text("this is not a video\n" * 50)
    write_test_video(dirpath / "full.mp4", n=20)
    data = (dirpath / "full.mp4").read_bytes()
    (dirpath / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom lost
    (dirpath / "full.mp4").unlink()
    return {
        "zero.mp4": "zero-byte",
        "text.mp4": "unreadable",
        "truncated.mp4": "unreadable",
        "missing.mp4": "missing",
    }


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The tiny demo dataset (seed 0), generated once per test session."""
    from data_index.demo import generate_demo

    out = tmp_path_factory.getbasetemp() / "tiny_demo"
    if not (out / "long.parquet").exists():
        generate_demo(out, seed=0, size="tiny", workers=1)
    return out
