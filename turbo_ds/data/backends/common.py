"""What every decoder backend shares: the error it raises, the cheap file checks, index clamping, the
orientation rule and the dense-or-sparse decision."""

from __future__ import annotations

import os

import numpy as np


class DecodeError(RuntimeError):
    """A video that cannot be opened or read; ``reason`` is a short machine-friendly tag (missing,
    zero-byte, unreadable, read-failed, no-frames, no-video-stream), ``log`` what the decoders printed
    while trying (set by ``decode_frames``)."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        self.log = ""
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def check_file(path: str) -> None:
    """Cheap checks before handing a file to a decoder (which may crash or hang on garbage)."""
    if not os.path.exists(path):
        raise DecodeError(path, "missing")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "zero-byte")


def clamp(indices, num_frames: int) -> np.ndarray:
    return np.clip(np.asarray(indices, dtype=np.int64), 0, max(0, num_frames - 1))
