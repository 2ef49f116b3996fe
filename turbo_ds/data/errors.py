"""Counting and reporting videos that fail to decode at training time.

Every failure is appended as one JSON line (path, video_id, reason, sample_idx, detail, log: what the
decoders printed, skipped) to a per-rank file in ``log_dir``; DataLoader workers (and the rank's other
loaders) append to the same file (one short ``O_APPEND`` write per failure), so the count is shared
by all workers of a rank whatever their start method. Each process re-reads only what was appended
since it last looked, so a video that failed once is known to every worker and not opened again: its
later occurrences are logged with ``skipped: true``. Past ``max_failures`` distinct broken videos the
run stops with :class:`TooManyFailuresError`.

The trainer merges every rank's entries (:func:`read_entries`, :func:`write_entries`) and reports the
count of distinct videos (:func:`summary_line`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
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
        self._known: dict[str, dict] = {}  # path -> first entry, of the file's first _offset bytes
        self._offset = 0

    def record(
        self,
        path: str,
        video_id: str | None,
        reason: str,
        sample_idx: int,
        detail: str = "",
        log: str = "",
    ) -> None:
        """Log a video that just failed to decode; raises past ``max_failures`` distinct videos."""
        self._append(
            {
                "path": path,
                "video_id": video_id,
                "reason": reason,
                "sample_idx": int(sample_idx),
                "detail": detail,
                "log": log,
                "skipped": False,
            }
        )
        n = self.num_failed_videos()
        if n > self.max_failures:
            raise TooManyFailuresError(
                f"{n} distinct videos failed to decode (cap max_failures={self.max_failures}); "
                f"last: {path}: {reason}. Every failure (path, reason) is listed in {self.path}. "
                "Fix or drop them (`python -m data_index validate INDEX --root DIR`) or raise max_failures."
            )

    def record_skip(self, path: str, sample_idx: int) -> None:
        """Log another occurrence of a known-failed video, replaced without being opened."""
        first = self.known_failed()[path]
        self._append(
            {
                "path": path,
                "video_id": first["video_id"],
                "reason": first["reason"],
                "sample_idx": int(sample_idx),
                "skipped": True,
            }
        )

    def _append(self, entry: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def known_failed(self) -> dict[str, dict]:
        """{path: its first entry} of every video in the file, by any writer: one ``stat`` per call, and
        a read of the new lines only when the file grew."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return self._known
        if size < self._offset:  # replaced or truncated under us: start over
            self._known, self._offset = {}, 0
        if size > self._offset:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(size - self._offset)
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            for line in data[:end].splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._known.setdefault(entry["path"], entry)
            self._offset += end
        return self._known

    def entries(self) -> list[dict]:
        return read_entries([self.path])

    def num_failed_videos(self) -> int:
        return len(self.known_failed())

    def summary(self) -> dict:
        """{"failures": occurrences, "videos": {path: reason}, "log": file} for logging at epoch end."""
        entries = self.entries()
        return {
            "failures": len(entries),
            "videos": {e["path"]: e["reason"] for e in entries},
            "log": str(self.path),
        }


def read_entries(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Every entry of these failure files, in file order (missing files have none)."""
    out = []
    for p in paths:
        p = Path(p)
        if p.exists():
            out.extend(json.loads(x) for x in p.read_text().splitlines() if x.strip())
    return out


def write_entries(entries: Iterable[dict], path: str | os.PathLike) -> Path:
    """One JSON line per entry (e.g. every rank's, merged on rank 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def summary_line(num_videos: int, occurrences: int, details: str | os.PathLike, final: bool) -> str:
    """What rank 0 prints at an epoch end (``final`` False) or at the end of the run."""
    if num_videos == 0:
        return "data: no video failed to decode"
    videos = "1 video" if num_videos == 1 else f"{num_videos} videos"
    times = "1 occurrence" if occurrences == 1 else f"{occurrences} occurrences"
    so_far = "" if final else " so far"
    return f"data: {videos} failed to decode{so_far} ({times}, all ranks); details: {details}"
