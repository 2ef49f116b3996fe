"""The index build: annotation entries (parsers.py) -> probed rows, streamed in chunks.

Entries are numbered in annotation order and cut into chunks of ``chunk_size``. A chunk's videos are
probed in worker processes (a bounded window in flight, so the pool never waits at a chunk's end and
nothing holds more than a few chunks) and the chunk is written to its own part file in the work
folder beside the output (``OUT.work/``: ``chunk-K.parquet`` + ``chunk-K.errors.parquet``, each
written under a temporary name and renamed). A killed build run again skips the chunks whose part
exists: nothing is probed twice. ``progress.json`` there names the build (format, options, the
annotations' SHA-1) so a different build never resumes from it. When every chunk is done the parts
are copied, row group by row group, into the index and its errors table, and the folder is removed.

``shard=(i, N)`` builds only the chunks k with k % N == i, into a *part*: an index whose row group j
is chunk i + j*N (empty ones kept) and whose metadata names the shard; ``merge.py`` interleaves the
N parts into the index one build would write (same rows, order and errors).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data_index.parsers import PARSERS, DataIndexError, Entry, Source, find_videos  # noqa: F401 (API)
from turbo_ds.data.decode import DecodeError, probe_video
from turbo_ds.data.schema import IndexWriter, errors_path_for, errors_table, rows_table

CHUNK_SIZE = 1024  # entries per chunk: the unit of resume and of shards, one row group of the index
SHARD_KEY = b"turbo_ds.shard"


class Built(NamedTuple):
    rows: int
    errors: int


# ----------------------------------------------------------------------------- probing


def _probe(args: tuple[str, bool]) -> tuple[dict | None, str | None, str]:
    path, exact = args
    try:
        m = probe_video(path, exact=exact)
        return m.__dict__, None, ""
    except DecodeError as e:
        return None, e.reason, e.detail
    except Exception as e:  # a crash in one file must not stop the build
        return None, "unreadable", f"{type(e).__name__}: {e}"


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: a probe worker whose build was killed (SIGKILL, out of memory) exits too,
    instead of waiting forever on the pool's queue (and holding what it inherited)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _workers(workers: int) -> int:
    return workers or min(8, os.cpu_count() or 1)


def probe_many(
    paths: Sequence[str], workers: int = 0, exact: bool = True, desc: str = "probe"
) -> list[tuple]:
    """Probe ``paths`` in ``workers`` processes (0 = one per CPU, 1 = in-process), with a progress bar."""
    bar = tqdm(total=len(paths), desc=desc, unit="video", disable=None)
    out = []
    for result in probe_stream(((p, exact) for p in paths), workers):
        out.append(result)
        bar.update()
    bar.close()
    return out


def probe_stream(jobs: Iterable[tuple[str, bool] | None], workers: int = 0) -> Iterator[tuple | None]:
    """``_probe`` of each job, in order, in ``workers`` processes (see :func:`map_in_order`)."""
    yield from map_in_order(_probe, jobs, workers)


def map_in_order(fn: Callable, jobs: Iterable, workers: int = 0) -> Iterator:
    """``fn(job)`` for each job, in order, in ``workers`` processes (0: one per CPU up to 8; 1: here),
    with at most 32 jobs per worker in flight (``ProcessPoolExecutor.map`` would submit every job at
    once), so ``jobs`` may be a generator over millions. A None job gives None. ``fn`` must be a
    module-level function (the workers import its module)."""
    workers = _workers(workers)
    if workers <= 1:
        yield from (None if job is None else fn(job) for job in jobs)
        return
    window: deque[Future | None] = deque()
    # spawn, not fork: a fork of a process with threads (a notebook's, a test session's: tqdm's
    # monitor, MLflow's) can hang the child on a lock another thread held; the workers import little.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=spawn, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        for job in jobs:
            window.append(None if job is None else pool.submit(fn, job))
            while len(window) > 32 * workers:
                fut = window.popleft()
                yield None if fut is None else fut.result()
        while window:
            fut = window.popleft()
            yield None if fut is None else fut.result()


def _to_row(rec: dict, meta: dict) -> tuple[dict, list[dict]]:
    """An index row from an annotation record and its probed metadata, + errors-table rows for
    captions dropped from it (sentences past the video's end)."""
    row = {**rec, **meta}
    fps = meta["fps"]
    if "segments_frames" in row:
        row["segments"] = [
            {"start_s": a / fps, "end_s": b / fps, "label": lab} for a, b, lab in row.pop("segments_frames")
        ]
    if "captions_frames" in row:
        row["captions"] = [
            {"start_s": a / fps, "end_s": b / fps, "text": t} for a, b, t in row.pop("captions_frames")
        ]
    errors = _drop_late_captions(row) if row.pop("drop_late_captions", False) else []
    return row, errors


def _chunk_rows(probed: Iterable[tuple[Entry, tuple | None]], bar: tqdm) -> tuple[list[dict], list[dict]]:
    """The index rows and errors-table rows of a chunk's (entry, probe result) pairs, in order."""
    rows, errors = [], []
    for (rec, entry_errors), result in probed:
        errors.extend(entry_errors)
        bar.update()
        if rec is None:
            continue
        meta, reason, detail = result
        if meta is None:
            reason += f": {detail}" if detail else ""
            errors.append(
                {"video_id": rec["video_id"], "path": rec["path"], "stage": "probe", "reason": reason}
            )
            continue
        row, row_errors = _to_row(rec, meta)
        rows.append(row)
        errors.extend(row_errors)
    return rows, errors


def _drop_late_captions(row: dict) -> list[dict]:
    """Remove captions that start at or after the video's end; returns errors-table entries for them."""
    dur = float(row["duration_s"])
    kept, errors = [], []
    for pos, c in enumerate(row.get("captions") or []):
        if c["start_s"] >= dur:
            i = c.get("ann_index", pos)
            errors.append(
                {
                    "video_id": row["video_id"],
                    "path": row["path"],
                    "stage": "captions",
                    "reason": (
                        f"sentence {i} ({c['start_s']:.3f}-{c['end_s']:.3f} s) starts at or after "
                        f"the end of the video ({dur:.3f} s): dropped"
                    ),
                }
            )
        else:
            kept.append(c)
    row["captions"] = kept
    return errors


# ----------------------------------------------------------------------------- work folder


def file_digest(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Name, size and SHA-1 of each file (a folder: of each file under it, in sorted order)."""
    out = []
    for p in map(Path, paths):
        for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
            h = hashlib.sha1()
            try:
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
            except OSError as e:
                raise DataIndexError(f"{f}: cannot read: {e.strerror}") from None
            out.append({"name": f.name, "bytes": f.stat().st_size, "sha1": h.hexdigest()})
    return out


def default_work_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".work")


class WorkFolder:
    """Part files of finished chunks + ``progress.json`` (which build, how far), for one output.

    A lock on ``lock`` keeps a second build of the same output from writing here at the same time (a
    POSIX record lock: held by this process only, not by the probe workers it forks, so it goes when
    the build dies)."""

    def __init__(self, path: Path, build: dict, root: str, shard: tuple[int, int]):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._lock = open(path / "lock", "a")  # noqa: SIM115 (held for the build's life)
        try:
            fcntl.lockf(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DataIndexError(f"{path}: another build of this output is running") from None
        self.ident = {"build": build, "root": root, "shard": list(shard)}
        progress = path / "progress.json"
        if progress.exists():
            old = json.loads(progress.read_text())
            was = {**old.get("build", {}), "root": old.get("root"), "shard": old.get("shard")}
            now = {**build, "root": root, "shard": list(shard)}
            differ = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            if differ:
                self.close()
                raise DataIndexError(
                    f"{path} holds an unfinished build with another {', '.join(differ)}: run the same "
                    "command to resume it, or delete the folder to start over"
                )
        for stale in path.glob("*.tmp*"):  # a part half-written when the build was killed
            stale.unlink()

    def part(self, k: int) -> Path:
        return self.path / f"chunk-{k:07d}.parquet"

    def done(self, k: int) -> bool:
        return self.part(k).exists()

    def write_chunk(self, k: int, rows: list[dict], errors: list[dict]) -> None:
        """Errors first, then rows: a chunk whose rows part exists is complete."""
        for table, final in (
            (errors_table(errors), errors_path_for(self.part(k))),
            (rows_table(rows), self.part(k)),
        ):
            tmp = final.with_name(final.name + ".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, final)

    def read_chunk(self, k: int):
        return pq.read_table(self.part(k)), pq.read_table(errors_path_for(self.part(k)))

    def save_progress(self, **counts: Any) -> None:
        tmp = self.path / "progress.json.tmp"
        tmp.write_text(
            json.dumps({**self.ident, **counts, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1)
        )
        os.replace(tmp, self.path / "progress.json")

    def close(self) -> None:
        self._lock.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path)


# ----------------------------------------------------------------------------- build


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> (i, N)."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise DataIndexError(f"--shard {spec!r}: expected I/N, e.g. 0/8") from None
    if not 0 <= i < n:
        raise DataIndexError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def build(
    fmt: str,
    annotations: Sequence[str | os.PathLike],
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 0,
    split: str | None = None,
    labels: str | None = None,
    shard: tuple[int, int] = (0, 1),
    chunk_size: int = CHUNK_SIZE,
    work_dir: str | os.PathLike | None = None,
    exact: bool = True,
) -> Built:
    """Parse ``annotations`` in format ``fmt``, probe every video, write the index at ``out`` (+ its
    errors table). Resumes an unfinished build of the same inputs from ``work_dir`` (default
    ``OUT.work``). With ``shard=(i, N)``, ``out`` is part i of N, for ``merge``."""
    if fmt not in PARSERS:
        raise DataIndexError(f"unknown format {fmt!r}; choose from {sorted(PARSERS)}")
    if chunk_size < 1:
        raise DataIndexError(f"chunk_size must be >= 1, got {chunk_size}")
    i, n_shards = shard
    root, out = Path(root), Path(out)
    files = [str(a) for a in annotations]
    src = Source(files, root, split=split, labels=labels)
    parser = PARSERS[fmt]
    ident = {
        "format": fmt,
        "split": split,
        "labels": file_digest([labels]) if labels else None,
        "annotations": file_digest(files),
        "chunk_size": chunk_size,
        "exact": exact,
    }
    # A first pass reads every annotation (a file that does not parse fails here, before any probe)
    # and counts the entries, for the progress bar and the shards' chunk lists.
    total = sum(1 for _ in tqdm(parser(src), desc="read annotations", unit="video", disable=None))
    n_chunks = math.ceil(total / chunk_size)
    mine = range(i, n_chunks, n_shards)
    work = WorkFolder(Path(work_dir) if work_dir else default_work_dir(out), ident, str(root), shard)
    try:
        pending = {k for k in mine if not work.done(k)}
        mine_entries = sum(min(chunk_size, total - k * chunk_size) for k in mine)
        done_entries = mine_entries - sum(min(chunk_size, total - k * chunk_size) for k in pending)
        counts = {"entries": total, "chunks": len(mine), "chunks_done": len(mine) - len(pending)}
        work.save_progress(**counts)
        bar = tqdm(total=mine_entries, initial=done_entries, desc="probe", unit="video", disable=None)
        todo = ((n // chunk_size, e) for n, e in enumerate(parser(src)) if n // chunk_size in pending)
        todo1, todo2 = itertools.tee(todo)
        jobs = (None if rec is None else (str(root / rec["path"]), exact) for _, (rec, _) in todo1)
        probed = zip(todo2, probe_stream(jobs, workers), strict=True)
        for k, group in itertools.groupby(probed, key=lambda item: item[0][0]):
            rows, errors = _chunk_rows(((entry, result) for (_, entry), result in group), bar)
            work.write_chunk(k, rows, errors)
            pa.default_memory_pool().release_unused()  # mimalloc keeps freed pages: RSS crept per chunk
            pending.discard(k)
            counts["chunks_done"] += 1
            work.save_progress(**counts)
        bar.close()
        if pending:
            raise DataIndexError(f"{', '.join(files)}: fewer entries than when the build started: changed?")
        extra, keep_empty = None, False
        if n_shards > 1:
            shard_meta = {"shard": i, "of": n_shards, "entries": total, "chunks": len(mine), "build": ident}
            extra, keep_empty = {SHARD_KEY: json.dumps(shard_meta).encode()}, True
        info = {"root": str(root), "format": fmt}
        with IndexWriter(out, info=info, extra=extra, keep_empty=keep_empty) as w:
            for k in mine:
                rows_t, errors_t = work.read_chunk(k)
                w.write(rows_t)
                w.write_errors(errors_t)
                del rows_t, errors_t
                pa.default_memory_pool().release_unused()
    except BaseException:
        work.close()
        raise
    work.remove()
    return Built(w.rows, w.errors)
