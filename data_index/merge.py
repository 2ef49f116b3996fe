"""Merge the parts of a sharded build (``build --shard i/N``) into one index.

Part i holds chunks i, i+N, i+2N... as its row groups 0, 1, 2... (empty ones kept), in its index and
its errors table, so chunk k is row group k // N of part k % N: reading the chunks in order k = 0, 1,
... gives the rows and errors of a single build, in its order, one chunk in memory at a time.
Before writing, every part is checked: a shard part, all of the same build (format, options,
annotations' SHA-1, entry count), each shard exactly once, the row groups its chunk list needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from data_index.builders import SHARD_KEY, Built
from data_index.parsers import DataIndexError
from turbo_ds.data.schema import ERRORS_SCHEMA, INDEX_SCHEMA, IndexWriter, errors_path_for, index_metadata


def _part(path: Path) -> dict:
    if not path.exists():
        raise DataIndexError(f"{path}: no such part")
    meta = pq.read_schema(path).metadata or {}
    if SHARD_KEY not in meta:
        raise DataIndexError(f"{path}: not a shard part (built without --shard I/N)")
    shard = json.loads(meta[SHARD_KEY])
    errors = errors_path_for(path)
    if not errors.exists():
        raise DataIndexError(f"{path}: its errors table {errors.name} is missing")
    index_pf, errors_pf = pq.ParquetFile(path), pq.ParquetFile(errors)
    for pf, schema, name in ((index_pf, INDEX_SCHEMA, path), (errors_pf, ERRORS_SCHEMA, errors)):
        if not pf.schema_arrow.equals(schema):
            raise DataIndexError(f"{name}: columns differ from the index schema")
        if pf.num_row_groups != shard["chunks"]:
            raise DataIndexError(
                f"{name}: {pf.num_row_groups} row groups, its shard has {shard['chunks']} chunks: incomplete?"
            )
    return {
        **shard,
        "path": path,
        "index": index_pf,
        "errors": errors_pf,
        "info": index_metadata(path)["info"],
    }


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> Built:
    """Check ``parts`` (one per shard, any order) and write their merged index at ``out``."""
    loaded = [_part(Path(p)) for p in parts]
    if not loaded:
        raise DataIndexError("merge: no parts given")
    first = loaded[0]
    for p in loaded[1:]:
        for key in ("of", "entries", "build"):
            if p[key] != first[key]:
                differ = (
                    key
                    if key != "build"
                    else ", ".join(k for k in first[key] if p[key].get(k) != first[key][k])
                )
                raise DataIndexError(f"{p['path']} and {first['path']} come from different builds ({differ})")
    n = first["of"]
    by_shard: dict[int, dict] = {}
    for p in loaded:
        if p["shard"] in by_shard:
            raise DataIndexError(
                f"{p['path']} and {by_shard[p['shard']]['path']} are both shard {p['shard']}/{n}"
            )
        by_shard[p["shard"]] = p
    missing = sorted(set(range(n)) - set(by_shard))
    if missing:
        raise DataIndexError(f"merge: shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
    chunk_size = first["build"]["chunk_size"]
    n_chunks = -(-first["entries"] // chunk_size)
    for i, p in by_shard.items():
        if p["chunks"] != len(range(i, n_chunks, n)):
            raise DataIndexError(
                f"{p['path']}: {p['chunks']} chunks, shard {i}/{n} of {n_chunks} has another count"
            )
    with IndexWriter(out, info=by_shard[0]["info"]) as w:
        for k in range(n_chunks):
            p = by_shard[k % n]
            w.write(p["index"].read_row_group(k // n))
            w.write_errors(p["errors"].read_row_group(k // n))
    return Built(w.rows, w.errors)
