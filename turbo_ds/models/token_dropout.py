"""Token dropout (Turbo Training): keep a random subset of the patch tokens of each clip.

`token_dropout_indices` is a pure function that picks which tokens to keep; `gather_tokens` applies the
choice; `TokenDropout` is the thin module a model holds. Every sample of a batch keeps the same number
of tokens, so kept tokens form a dense (B, N_keep, D) tensor without padding.
"""

from __future__ import annotations

import torch
from torch import nn

from turbo_ds.models.config import DROP_STRATEGIES

Grid = tuple[int, int, int]


def check_drop_ratio(drop_ratio: float) -> float:
    """Return `drop_ratio` as a float, or raise ValueError unless it is in [0, 1)."""
    drop_ratio = float(drop_ratio)
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
    return drop_ratio


def num_kept(num_tokens: int, drop_ratio: float) -> int:
    """Tokens kept out of `num_tokens` at `drop_ratio`: rounded, at least one."""
    return max(1, min(num_tokens, int(num_tokens * (1.0 - drop_ratio) + 0.5)))


def _split(noise: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the k smallest entries along the last dim (kept) and of the rest, both sorted."""
    order = noise.argsort(dim=-1)
    return order[..., :k].sort(dim=-1).values, order[..., k:].sort(dim=-1).values


def token_dropout_indices(
    batch: int,
    grid: Grid,
    drop_ratio: float,
    strategy: str = "random",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the kept and dropped tokens of a (T', H', W') token grid, flattened time-major.

    Strategies: `random` draws independently per sample over all tokens; `tube` drops the same spatial
    positions at every time step (whole tubes); `frame_uniform` keeps the same number in every frame,
    at positions drawn per frame. Returns sorted long tensors `keep_idx` (B, N_keep) and `drop_idx`
    (B, N - N_keep) on `device`; with `generator` the choice is reproducible.
    """
    drop_ratio = check_drop_ratio(drop_ratio)
    if strategy not in DROP_STRATEGIES:
        raise ValueError(f"drop strategy must be one of {DROP_STRATEGIES}, got {strategy!r}")
    t, h, w = grid
    hw = h * w
    gen_device = generator.device if generator is not None else device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=gen_device)

    if strategy == "random":
        keep, drop = _split(rand(batch, t * hw), num_kept(t * hw, drop_ratio))
    else:
        k = num_kept(hw, drop_ratio)
        noise = rand(batch, 1, hw).expand(batch, t, hw) if strategy == "tube" else rand(batch, t, hw)
        keep, drop = _split(noise, k)
        # Per-frame positions -> flat indices; frames are in order, so the result stays sorted.
        offset = torch.arange(t, device=keep.device)[None, :, None] * hw
        keep, drop = (keep + offset).flatten(1), (drop + offset).flatten(1)
    return keep.to(device), drop.to(device)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens: x (B, N, D), idx (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class TokenDropout(nn.Module):
    """Drops patch tokens in training mode; in eval mode (or at ratio 0) passes all tokens through."""

    def __init__(self, drop_ratio: float = 0.0, strategy: str = "random") -> None:
        super().__init__()
        if strategy not in DROP_STRATEGIES:
            raise ValueError(f"drop strategy must be one of {DROP_STRATEGIES}, got {strategy!r}")
        self.drop_ratio = check_drop_ratio(drop_ratio)
        self.strategy = strategy

    def sample(
        self,
        batch: int,
        grid: Grid,
        device: torch.device | str | None = None,
        *,
        drop_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(keep_idx, drop_idx) for a batch, or (None, None) in eval mode or at ratio 0.

        ``drop_ratio`` given: drop at that ratio in any mode (test-time draws, seeded by ``generator``);
        None: the module's own ratio, in training mode only."""
        if drop_ratio is None:
            if not self.training:
                return None, None
            drop_ratio = self.drop_ratio
        if check_drop_ratio(drop_ratio) == 0.0:
            return None, None
        return token_dropout_indices(
            batch, grid, drop_ratio, self.strategy, generator=generator, device=device
        )

    def forward(
        self, x: torch.Tensor, grid: Grid
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x (B, N, D) patch tokens -> (kept tokens, keep_idx, drop_idx); indices are None if no drop."""
        keep_idx, drop_idx = self.sample(x.shape[0], grid, x.device)
        if keep_idx is None:
            return x, None, None
        return gather_tokens(x, keep_idx), keep_idx, drop_idx

    def extra_repr(self) -> str:
        return f"drop_ratio={self.drop_ratio}, strategy={self.strategy!r}"
