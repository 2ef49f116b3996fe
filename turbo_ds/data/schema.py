"""The Parquet video index: schema, writing, reading (memory-mapped, cheap to pickle into workers).

One row per video. ``path`` is relative to a root given at build or load time. The schema version is
stored in the Parquet file metadata (``turbo_ds.schema_version``); see ``docs/data_index.md``.

Versions: a reader accepts any index of the same major version. 1.1 added the captions' ``alignable``
flag (nullable bool: null = unknown, e.g. ASR narration); in a 1.0 file the caption dicts have no
``alignable`` key, and ``caption.get("alignable")`` is None, as for an unknown flag.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

SCHEMA_VERSION = "1.1"
META_VERSION_KEY = b"turbo_ds.schema_version"
META_INFO_KEY = b"turbo_ds.info"
ROW_GROUP_ROWS = 4096  # write_index's row groups

log = logging.getLogger(__name__)

SEGMENT_TYPE = pa.struct([("start_s", pa.float32()), ("end_s", pa.float32()), ("label", pa.int32())])
CAPTION_TYPE = pa.struct(
    [
        ("start_s", pa.float32()),
        ("end_s", pa.float32()),
        ("text", pa.string()),
        ("alignable", pa.bool_()),  # 1.1; null = unknown (narration), False = not visible in the video
    ]
)

INDEX_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("split", pa.string()),
        ("label", pa.int32()),  # -1 when the video has no label
        ("label_name", pa.string()),  # null when unknown
        ("num_frames", pa.int32()),  # frames that actually decode (checked at build time)
        ("fps", pa.float32()),
        ("duration_s", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("segments", pa.list_(SEGMENT_TYPE)),  # null or [] when absent
        ("captions", pa.list_(CAPTION_TYPE)),  # null or [] when absent
    ]
)

ERRORS_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("path", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)


def errors_path_for(index_path: str | os.PathLike) -> Path:
    """The errors table that sits next to an index: ``foo.parquet`` -> ``foo.errors.parquet``."""
    p = Path(index_path)
    stem = p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name
    return p.with_name(stem + ".errors.parquet")


def _normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in INDEX_SCHEMA.names}
    if out["label"] is None:
        out["label"] = -1
    for key, struct in (("segments", SEGMENT_TYPE), ("captions", CAPTION_TYPE)):
        if out[key] is not None:  # only the schema's fields (builders may carry private keys)
            out[key] = [{f.name: x.get(f.name) for f in struct} for x in out[key]]
    return out


def rows_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Row dicts (the schema's fields; others ignored) as a table of the index schema."""
    return pa.Table.from_pylist([_normalise_row(r) for r in rows], schema=INDEX_SCHEMA)


def errors_table(errors: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{k: (None if e.get(k) is None else str(e.get(k))) for k in ERRORS_SCHEMA.names} for e in errors],
        schema=ERRORS_SCHEMA,
    )


def index_schema(info: dict[str, Any] | None = None, extra: dict[bytes, bytes] | None = None) -> pa.Schema:
    """The index schema with its file metadata: version, builder ``info`` (JSON) and ``extra`` keys."""
    meta = {META_VERSION_KEY: SCHEMA_VERSION.encode(), META_INFO_KEY: json.dumps(info or {}).encode()}
    return INDEX_SCHEMA.with_metadata({**meta, **(extra or {})})


class IndexWriter:
    """Writes an index and its errors table one row group at a time, under temporary names that
    become ``out`` and ``*.errors.parquet`` only when the writer closes without an exception (the
    errors table first: an index file that exists is complete, and so is its errors table).

    Each ``write`` / ``write_errors`` call is one row group; ``keep_empty`` keeps empty ones (shard
    parts: row group j is chunk j of the shard, see data_index/builders.py).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        info: dict[str, Any] | None = None,
        extra: dict[bytes, bytes] | None = None,
        keep_empty: bool = False,
    ):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.keep_empty = keep_empty
        self.rows = self.errors = 0
        tag = f".tmp{os.getpid()}"
        self._paths = [
            (self.out.with_name(self.out.name + tag), self.out),
            (
                errors_path_for(self.out).with_name(errors_path_for(self.out).name + tag),
                errors_path_for(self.out),
            ),
        ]
        self._index = pq.ParquetWriter(self._paths[0][0], index_schema(info, extra))
        self._errors = pq.ParquetWriter(self._paths[1][0], ERRORS_SCHEMA)

    def write(self, rows: pa.Table | Sequence[dict[str, Any]]) -> None:
        table = rows if isinstance(rows, pa.Table) else rows_table(rows)
        if table.num_rows or self.keep_empty:
            self._index.write_table(table, row_group_size=max(1, table.num_rows))
            self.rows += table.num_rows

    def write_errors(self, errors: pa.Table | Sequence[dict[str, Any]]) -> None:
        table = errors if isinstance(errors, pa.Table) else errors_table(errors)
        if table.num_rows or self.keep_empty:
            self._errors.write_table(table, row_group_size=max(1, table.num_rows))
            self.errors += table.num_rows

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._index.close()
        self._errors.close()
        if exc_type is not None:
            for tmp, _ in self._paths:
                tmp.unlink(missing_ok=True)
            return
        for tmp, final in reversed(self._paths):
            os.replace(tmp, final)


def write_index(
    rows: Iterable[dict[str, Any]],
    out_path: str | os.PathLike,
    *,
    errors: Iterable[dict[str, Any]] = (),
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``rows`` (dicts with the schema's fields) as an index, and the errors table next to it,
    ``ROW_GROUP_ROWS`` rows at a time (``rows`` may be a generator).

    The errors table is always written (possibly empty) so that a reader can tell "no errors" from
    "not checked". ``info`` (JSON-able) is stored in the file metadata (builder, format, root...).
    """
    with IndexWriter(out_path, info=info) as w:
        for batch in _batched(rows):
            w.write(batch)
        for batch in _batched(errors):
            w.write_errors(batch)
    return Path(out_path)


def _batched(items: Iterable, n: int = ROW_GROUP_ROWS) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def read_errors(index_path: str | os.PathLike) -> list[dict[str, Any]]:
    p = errors_path_for(index_path)
    return pq.read_table(p).to_pylist() if p.exists() else []


def index_metadata(index_path: str | os.PathLike) -> dict[str, Any]:
    """Schema version and builder info stored in an index file."""
    meta = pq.read_schema(index_path).metadata or {}
    return {
        "schema_version": meta.get(META_VERSION_KEY, b"unknown").decode(),
        "info": json.loads(meta.get(META_INFO_KEY, b"{}").decode() or "{}"),
    }


def _check_version(index_path: Path) -> None:
    """Any minor version of this major version reads (1.0 files lack the newer caption fields)."""
    version = index_metadata(index_path)["schema_version"]
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(
            f"{index_path}: index schema version {version!r}, this code reads {SCHEMA_VERSION!r}; "
            "rebuild it with `python -m data_index build ...`"
        )


def _arrow_cache_path(index_path: Path) -> Path:
    st = index_path.stat()
    key = f"{index_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{SCHEMA_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("TURBO_DS_INDEX_CACHE", Path(tempfile.gettempdir()) / "turbo_ds_index"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / f"{index_path.stem}-{digest}.arrow"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for this process (released when the file closes, also when
    the process dies). Works across the processes of one machine; keep the cache folder node-local."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_arrow_cache(index_path: str | os.PathLike) -> Path:
    """The uncompressed Arrow IPC copy of an index, written once per machine and memory-mapped.

    Parquet is compressed, so every reader would hold its own decoded copy; the Arrow copy's pages are
    shared by all DataLoader workers and ranks of a node through the page cache. The first process to
    get the lock writes it, row group by row group (never the whole table in memory), under a temporary
    name renamed at the end; the others wait on the lock and map the finished file.
    """
    index_path = Path(index_path)
    cache = _arrow_cache_path(index_path)
    if cache.exists():
        return cache
    with _file_lock(cache.with_name(cache.name + ".lock")):
        if cache.exists():  # written by the process we waited for
            return cache
        for stale in cache.parent.glob(cache.name + ".tmp*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        start = time.perf_counter()
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        pf = pq.ParquetFile(index_path)
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, pf.schema_arrow) as writer:
            for batch in pf.iter_batches(batch_size=ROW_GROUP_ROWS):
                writer.write_batch(batch)
        os.replace(tmp, cache)
        log.info(
            "wrote the Arrow copy of %s: %s (%.0f MB, %.1f s)",
            index_path,
            cache,
            cache.stat().st_size / 1e6,
            time.perf_counter() - start,
        )
    return cache


def resolve_index_path(index_path: str | os.PathLike) -> Path:
    """A ``.parquet`` file, or a folder holding ``index.parquet`` or exactly one index file."""
    p = Path(index_path)
    if p.is_dir():
        found = sorted(x for x in p.glob("*.parquet") if not x.name.endswith(".errors.parquet"))
        if (p / "index.parquet").exists():
            return p / "index.parquet"
        if len(found) != 1:
            names = [x.name for x in found] or "none"
            raise FileNotFoundError(f"{p} is a folder: name one of its index files ({names})")
        return found[0]
    if not p.exists():
        raise FileNotFoundError(
            f"index not found: {p} (build it with `python -m data_index build` or `demo`)"
        )
    return p


class VideoIndex:
    """Read-only view of an index, optionally restricted to one split.

    The Arrow table is memory-mapped lazily in each process and never pickled: a ``VideoIndex`` sent
    to a DataLoader worker carries only the paths and the (int32) row positions of its split. Nothing
    here makes a Python object per row: split selection, counts and caption lengths are Arrow compute
    over the mapped columns, to numpy.
    """

    def __init__(self, index_path: str | os.PathLike, root: str | os.PathLike | None = None, split=None):
        self.index_path = resolve_index_path(index_path)
        _check_version(self.index_path)
        self.root = Path(root) if root is not None else self.index_path.parent
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"video root not found: {self.root} (the folder {self.index_path.name}'s relative paths resolve against)"
            )
        self.split = split
        self._arrow_path = str(ensure_arrow_cache(self.index_path))
        self._table: pa.Table | None = None
        if split is None:
            rows = np.arange(self.table.num_rows, dtype=np.int32)
        else:
            splits = self.table.column("split")
            mask = pc.fill_null(pc.equal(splits, split), False).to_numpy()
            rows = np.flatnonzero(mask).astype(np.int32)
            if len(rows) == 0:
                found = sorted(str(s) for s in pc.unique(splits).to_pylist())
                raise ValueError(f"{self.index_path}: no rows with split={split!r} (splits present: {found})")
        self.rows = rows

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            self._table = ipc.open_file(pa.memory_map(self._arrow_path, "r")).read_all()
        return self._table

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_table"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row ``i`` of the (split) view as a dict; ``abs_path`` is added."""
        row = self.table.slice(int(self.rows[i]), 1).to_pylist()[0]
        row["abs_path"] = str(self.root / row["path"])
        return row

    def abs_path(self, i: int) -> str:
        """Row ``i``'s ``abs_path`` without building the whole row."""
        return str(self.root / self.table.column("path")[int(self.rows[i])].as_py())

    def column(self, name: str) -> np.ndarray:
        col = self.table.column(name).to_numpy(zero_copy_only=False)
        return col[self.rows]

    @property
    def labels(self) -> np.ndarray:
        return self.column("label")

    @property
    def num_classes(self) -> int:
        top = pc.max(self.table.column("label")).as_py()
        return int(top) + 1 if top is not None and top >= 0 else 0

    def label_names(self) -> dict[int, str]:
        t = self.table.select(["label", "label_name"])
        t = t.filter(pc.and_(pc.greater_equal(t["label"], 0), pc.is_valid(t["label_name"])))
        pairs = t.group_by(["label", "label_name"]).aggregate([])
        return dict(zip(pairs["label"].to_pylist(), pairs["label_name"].to_pylist(), strict=True))

    def caption_lengths(self) -> np.ndarray:
        """int64 (len(self),): the number of captions of each row of the view (0 for null)."""
        lengths = pc.fill_null(pc.list_value_length(self.table.column("captions")), 0)
        return lengths.to_numpy().astype(np.int64)[self.rows]

    def caption_field(self, name: str) -> pa.Array | None:
        """Field ``name`` of every caption of the view, row after row (as :meth:`caption_lengths`
        counts them), gathered without copying the other fields; None when captions have no such field
        (``alignable`` in a schema 1.0 index)."""
        col = self.table.column("captions")
        if col.type.value_type.get_field_index(name) < 0:
            return None
        parts, base = [], 0
        for chunk in col.chunks:  # the rows (sorted) that fall in this chunk, by their list offsets
            sel = self.rows[(self.rows >= base) & (self.rows < base + len(chunk))] - base
            base += len(chunk)
            if len(sel) == 0:
                continue
            offsets = chunk.offsets.to_numpy()
            lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy()[sel].astype(np.int64)
            within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            positions = np.repeat(offsets[sel].astype(np.int64), lengths) + within
            parts.append(pc.struct_field(chunk.values, name).take(pa.array(positions)))
        return pa.concat_arrays(parts) if parts else pa.array([], col.type.value_type.field(name).type)
