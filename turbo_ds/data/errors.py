"""Counting and reporting videos that fail to decode at training time.

Every failure is appended as one JSON line (path, video_id, reason, sample_idx) to a per-rank file in
``log_dir``; DataLoader workers append to the same file (one short ``O_APPEND`` write per failure), so
the count is shared by all workers of a rank whatever their start method. Past ``max_failures``
distinct broken videos the run stops with :class:`TooManyFailuresError`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path


class TooManyFailuresError(RuntimeError):
    pass


class FailureLog:
    def __init__(self, max_failures: int, log_dir: str | os.PathLike | None = None, rank: int = 0):
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {max_failures}")
        self.max_failures = int(max_failures)
        self.log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="turbo_ds_fail_"))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / f"decode_failures.rank{rank}.jsonl"
        self.path.touch()

    def record(self, path: str, video_id: str | None, reason: str, sample_idx: int, detail: str = "") -> None:
        line = json.dumps(
            {
                "path": path,
                "video_id": video_id,
                "reason": reason,
                "sample_idx": int(sample_idx),
                "detail": detail,
            }
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        n = self.num_failed_videos()
        warnings.warn(
            f"turbo_ds: replacing sample {sample_idx}, cannot decode {path}: {reason} {detail}", stacklevel=2
        )
        if n > self.max_failures:
            raise TooManyFailuresError(
                f"{n} distinct videos failed to decode (cap max_failures={self.max_failures}); "
                f"last: {path}: {reason}. Every failure (path, reason) is listed in {self.path}. "
                "Fix or drop them (`python -m data_index validate INDEX --root DIR`) or raise max_failures."
            )

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

    def num_failed_videos(self) -> int:
        return len({e["path"] for e in self.entries()})

    def summary(self) -> dict:
        """{"failures": occurrences, "videos": {path: reason}, "log": file} for logging at epoch end."""
        entries = self.entries()
        return {
            "failures": len(entries),
            "videos": {e["path"]: e["reason"] for e in entries},
            "log": str(self.path),
        }
