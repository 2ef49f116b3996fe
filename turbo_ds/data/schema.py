"""The Parquet video index: schema, writing, reading (memory-mapped, cheap to pickle into workers).

One row per video. ``path`` is relative to a root given at build or load time. The schema version is
stored in the Parquet file metadata (``turbo_ds.schema_version``); see ``docs/data_index.md``.

Versions: a reader accepts any index of the same major version. 1.1 added the captions' ``alignable``
flag (nullable bool: null = unknown, e.g. ASR narration); in a 1.0 file the caption dicts have no
``alignable`` key, and ``caption.get("alignable")`` is None, as for an unknown flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

SCHEMA_VERSION = "1.1"
META_VERSION_KEY = b"turbo_ds.schema_version"
META_INFO_KEY = b"turbo_ds.info"

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


def write_index(
    rows: Iterable[dict[str, Any]],
    out_path: str | os.PathLike,
    *,
    errors: Sequence[dict[str, Any]] = (),
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``rows`` (dicts with the schema's fields) as an index, and the errors table next to it.

    The errors table is always written (possibly empty) so that a reader can tell "no errors" from
    "not checked". ``info`` (JSON-able) is stored in the file metadata (builder, format, root...).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([_normalise_row(r) for r in rows], schema=INDEX_SCHEMA)
    meta = {META_VERSION_KEY: SCHEMA_VERSION.encode(), META_INFO_KEY: json.dumps(info or {}).encode()}
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, out_path, row_group_size=4096)
    err = pa.Table.from_pylist(
        [{k: (None if e.get(k) is None else str(e.get(k))) for k in ERRORS_SCHEMA.names} for e in errors],
        schema=ERRORS_SCHEMA,
    )
    pq.write_table(err, errors_path_for(out_path))
    return out_path


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


def _ensure_arrow_cache(index_path: Path) -> Path:
    """Parquet is compressed, so every reader would hold its own decoded copy. An uncompressed Arrow
    IPC copy of the index is memory-mapped instead: all DataLoader workers (and ranks on a node) share
    its pages through the page cache."""
    cache = _arrow_cache_path(index_path)
    if not cache.exists():
        table = pq.read_table(index_path)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 16)
        os.replace(tmp, cache)
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
    to a DataLoader worker carries only the paths and the (int32) row positions of its split.
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
        self._arrow_path = str(_ensure_arrow_cache(self.index_path))
        self._table: pa.Table | None = None
        splits = (
            pq.read_table(self.index_path, columns=["split"]).column("split").to_numpy(zero_copy_only=False)
        )
        if split is None:
            rows = np.arange(len(splits), dtype=np.int32)
        else:
            rows = np.flatnonzero(splits == split).astype(np.int32)
            if len(rows) == 0:
                found = sorted({str(s) for s in splits})
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
        labels = pq.read_table(self.index_path, columns=["label"]).column("label").to_numpy()
        return int(labels.max()) + 1 if len(labels) else 0

    def label_names(self) -> dict[int, str]:
        t = pq.read_table(self.index_path, columns=["label", "label_name"]).to_pylist()
        return {r["label"]: r["label_name"] for r in t if r["label"] >= 0 and r["label_name"] is not None}
