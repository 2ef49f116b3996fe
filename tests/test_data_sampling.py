"""Frame samplers (count, range, order, clamping) and clip transforms (same for every frame)."""

import numpy as np
import pytest
import torch

from turbo_ds.data.sampling import (
    FrameSampler,
    caption_window_indices,
    dense_clip_indices,
    multiview_clip_indices,
    uniform_segment_indices,
)
from turbo_ds.data.transforms import ClipTransform, normalize


def _check(idx, count, n):
    assert idx.dtype == np.int64
    assert len(idx) == count
    assert idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(idx) >= 0)


@pytest.mark.parametrize("n", [1, 7, 63, 64, 300])
def test_dense_clip(n):
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = dense_clip_indices(n, 16, 4, rng)
        _check(idx, 16, n)
        if n >= 61:
            assert np.all(np.diff(idx) == 4)  # the stride is kept when the video is long enough
        starts.add(int(idx[0]))
    if n > 61:
        assert len(starts) > 1  # random temporal crop
    else:
        assert starts == {0}  # short videos: from the start, the last frame repeated
    centre = dense_clip_indices(n, 16, 4, center=True)
    if n >= 61:
        assert centre[0] == (n - 61) // 2


@pytest.mark.parametrize("segments", [8, 16, 64, 256, 1024])
@pytest.mark.parametrize("n", [5, 100, 3000])
def test_uniform_segments(segments, n):
    idx = uniform_segment_indices(n, segments)
    _check(idx, segments, n)
    if n >= segments:
        assert len(np.unique(idx)) == segments  # one frame per segment, all different
        edges = np.linspace(0, n, segments + 1)
        assert np.all(idx >= np.floor(edges[:-1])) and np.all(idx < np.ceil(edges[1:]))
    rng_idx = uniform_segment_indices(n, segments, np.random.default_rng(1))
    _check(rng_idx, segments, n)


def test_caption_window_inside_span():
    fps, n = 10.0, 200
    idx = caption_window_indices(n, fps, 5.0, 9.0, 8)  # uniform over frames 50..90
    _check(idx, 8, n)
    assert idx.min() >= 50 and idx.max() < 90
    rng = np.random.default_rng(0)
    dense = caption_window_indices(n, fps, 5.0, 12.0, 8, stride=2, rng=rng)
    _check(dense, 8, n)
    assert dense.min() >= 50 and dense.max() < 120 and np.all(np.diff(dense) == 2)
    # span shorter than the clip: widened around its centre, clamped to the video
    short = caption_window_indices(n, fps, 19.5, 19.8, 8, stride=4)
    _check(short, 8, n)
    assert short.max() == n - 1


def test_multiview_spread():
    clips = multiview_clip_indices(100, 8, 2, 3)
    assert len(clips) == 3
    for c in clips:
        _check(c, 8, 100)
    assert clips[0][0] == 0 and clips[-1][-1] == 99
    assert clips[1][0] == 42  # starts at 0, 42.5 -> 42, 85


def test_frame_sampler_validation():
    with pytest.raises(ValueError, match="unknown"):
        FrameSampler(kind="bogus")
    with pytest.raises(ValueError, match="stride"):
        FrameSampler(kind="dense", stride=None)
    assert len(FrameSampler(kind="multiview", num_frames=4, stride=1, num_clips=2)(50, None)) == 2


def _clip_with_identical_frames(t=6, h=40, w=56):
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
    return frame.expand(t, -1, -1, -1).contiguous()


@pytest.mark.parametrize("train,num_crops", [(True, 1), (False, 1), (False, 3)])
def test_transform_same_for_every_frame(train, num_crops):
    clip = _clip_with_identical_frames()
    tf = ClipTransform(img_size=24, train=train, hflip=0.5, num_crops=num_crops)
    for seed in range(5):
        views = tf(clip, np.random.default_rng(seed))
        assert len(views) == (num_crops if not train else 1)
        for v in views:
            assert v.shape == (3, 6, 24, 24) and v.dtype == torch.float32
            # identical input frames stay identical: the crop/flip did not change between frames
            assert torch.equal(v[:, 0:1].expand_as(v), v)


def test_random_crop_varies_and_is_seeded():
    clip = torch.randint(
        0, 256, (4, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    tf = ClipTransform(img_size=24, train=True, hflip=0.5)
    a = tf(clip, np.random.default_rng(3))[0]
    b = tf(clip, np.random.default_rng(3))[0]
    c = tf(clip, np.random.default_rng(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_off_by_default_and_normalise():
    clip = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    clip[..., :4] = 255  # bright left half
    for seed in range(10):
        out = ClipTransform(img_size=8, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))(
            clip, np.random.default_rng(seed)
        )[0]
        assert out[..., :4].mean() > out[..., 4:].mean()  # never flipped
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 1, 2, 2) and torch.allclose(x, torch.ones_like(x))
