"""turbo_ds.data: Parquet video index -> frame sampler -> decoder -> uint8 transforms -> batches."""

from turbo_ds.data.dataset import VideoDataset, collate_samples
from turbo_ds.data.decode import DecodeError, VideoMeta, decode_frames, probe_video
from turbo_ds.data.errors import FailureLog, TooManyFailuresError
from turbo_ds.data.loader import ResumableDataLoader, build_dataloader
from turbo_ds.data.sampler import ShardedSampler
from turbo_ds.data.sampling import (
    FrameSampler,
    caption_window_indices,
    centred_clip_indices,
    dense_clip_indices,
    multiview_clip_indices,
    per_second_clip_indices,
    uniform_segment_indices,
)
from turbo_ds.data.schema import INDEX_SCHEMA, SCHEMA_VERSION, VideoIndex, read_errors, write_index
from turbo_ds.data.transforms import ClipTransform

__all__ = [
    "INDEX_SCHEMA",
    "SCHEMA_VERSION",
    "ClipTransform",
    "DecodeError",
    "FailureLog",
    "FrameSampler",
    "ResumableDataLoader",
    "ShardedSampler",
    "TooManyFailuresError",
    "VideoDataset",
    "VideoIndex",
    "VideoMeta",
    "build_dataloader",
    "caption_window_indices",
    "centred_clip_indices",
    "collate_samples",
    "decode_frames",
    "dense_clip_indices",
    "multiview_clip_indices",
    "per_second_clip_indices",
    "probe_video",
    "read_errors",
    "uniform_segment_indices",
    "write_index",
]
