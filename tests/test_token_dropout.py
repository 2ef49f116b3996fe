"""Token dropout: kept counts, sorted disjoint indices, strategy structure, reproducibility, errors."""

import pytest
import torch

from turbo_ds.models import TokenDropout, gather_tokens, num_kept, token_dropout_indices

GRID = (4, 3, 5)  # T', H', W' -> 60 tokens, 15 per frame
N, HW = 60, 15


@pytest.mark.parametrize("strategy", ["random", "tube", "frame_uniform"])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_kept_count_matches_ratio_and_indices_partition_the_grid(strategy, ratio):
    keep, drop = token_dropout_indices(6, GRID, ratio, strategy, generator=torch.Generator().manual_seed(1))
    per_frame = num_kept(HW, ratio)
    expected_keep = num_kept(N, ratio) if strategy == "random" else GRID[0] * per_frame
    assert abs(expected_keep - round(N * (1 - ratio))) <= GRID[0]  # rounding per frame at most
    assert keep.shape == (6, expected_keep) and drop.shape == (6, N - expected_keep)
    assert keep.dtype == drop.dtype == torch.long
    for k, d in zip(keep, drop, strict=True):
        assert torch.equal(k, k.sort().values) and torch.equal(d, d.sort().values)
        assert torch.equal(torch.cat([k, d]).sort().values, torch.arange(N))


def test_exact_counts():
    assert [num_kept(N, r) for r in (0.0, 0.25, 0.5, 0.75, 0.9)] == [60, 45, 30, 15, 6]
    assert num_kept(4, 0.99) == 1  # never drops everything


def test_tube_drops_whole_tubes():
    keep, drop = token_dropout_indices(4, GRID, 0.6, "tube", generator=torch.Generator().manual_seed(0))
    for k in keep:
        frames = k.reshape(GRID[0], -1)
        spatial = frames - torch.arange(GRID[0])[:, None] * HW
        assert (spatial == spatial[0]).all()  # same positions at every time step
        assert ((frames // HW) == torch.arange(GRID[0])[:, None]).all()
    assert len({tuple(k.tolist()) for k in keep}) > 1  # but different per sample


def test_frame_uniform_keeps_the_same_number_in_every_frame_at_varying_positions():
    keep, _ = token_dropout_indices(4, GRID, 0.6, "frame_uniform", generator=torch.Generator().manual_seed(0))
    for k in keep:
        counts = torch.bincount(k // HW, minlength=GRID[0])
        assert (counts == num_kept(HW, 0.6)).all()
    positions = (keep % HW).reshape(4, GRID[0], -1)
    assert not (positions == positions[:, :1]).all()  # not tubes


def test_random_is_independent_per_sample_and_reproducible_with_a_generator():
    a = token_dropout_indices(8, GRID, 0.5, "random", generator=torch.Generator().manual_seed(3))
    b = token_dropout_indices(8, GRID, 0.5, "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len({tuple(k.tolist()) for k in a[0]}) == 8


@pytest.mark.parametrize("ratio", [1.0, -0.1, 2.0])
def test_bad_ratio_raises(ratio):
    with pytest.raises(ValueError, match=r"drop_ratio must be in \[0, 1\)"):
        token_dropout_indices(1, GRID, ratio)
    with pytest.raises(ValueError, match="drop_ratio"):
        TokenDropout(ratio)


def test_bad_strategy_raises():
    with pytest.raises(ValueError, match="strategy"):
        token_dropout_indices(1, GRID, 0.5, "checkerboard")
    with pytest.raises(ValueError, match="strategy"):
        TokenDropout(0.5, "checkerboard")


def test_gather_tokens():
    x = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    idx = torch.tensor([[0, 4], [1, 2]])
    assert torch.equal(gather_tokens(x, idx), torch.stack([x[0, [0, 4]], x[1, [1, 2]]]))


def test_module_drops_in_training_only():
    module = TokenDropout(0.75, "tube")
    x = torch.randn(2, N, 8)
    kept, keep, drop = module(x, GRID)
    assert kept.shape == (2, GRID[0] * num_kept(HW, 0.75), 8)
    assert torch.equal(kept, gather_tokens(x, keep))
    module.eval()
    out, keep, drop = module(x, GRID)
    assert out is x and keep is None and drop is None
