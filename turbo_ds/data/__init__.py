"""turbo_ds.data: Parquet video index -> frame sampler -> decoder -> uint8 transforms -> batches.

The names below are imported on first use (PEP 562), so that ``data_index`` (probe, schema) and other
torch-free users do not pay for importing torch (seconds, and ~0.7 GB of RSS per process).
"""

from __future__ import annotations

import importlib

_WHERE = {
    "VideoDataset": "dataset",
    "collate_samples": "dataset",
    "DecodeError": "decode",
    "VideoMeta": "decode",
    "decode_frames": "decode",
    "probe_video": "decode",
    "FailureLog": "errors",
    "TooManyFailuresError": "errors",
    "ResumableDataLoader": "loader",
    "build_dataloader": "loader",
    "ShardedSampler": "sampler",
    "FrameSampler": "sampling",
    "caption_window_indices": "sampling",
    "centred_clip_indices": "sampling",
    "dense_clip_indices": "sampling",
    "multiview_clip_indices": "sampling",
    "per_second_clip_indices": "sampling",
    "uniform_segment_indices": "sampling",
    "INDEX_SCHEMA": "schema",
    "SCHEMA_VERSION": "schema",
    "VideoIndex": "schema",
    "read_errors": "schema",
    "write_index": "schema",
    "ClipTransform": "transforms",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
