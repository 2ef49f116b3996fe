"""Analytic FLOP counts (matmuls and attention only) for a VideoViT / TurboModel step.

One multiply-add = 2 FLOPs. Norms, softmax and element-wise ops are left out: they are a few percent
of a ViT's compute. Backward costs twice the forward, except for the tubelet embedding whose input
needs no gradient (1x); checkpointed blocks run their forward once more in backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from turbo_ds.models.config import ViTConfig
from turbo_ds.models.partial_mae import num_reconstructed
from turbo_ds.models.token_dropout import num_kept


@dataclass
class StepFlops:
    """FLOPs per step for the whole batch."""

    forward: float
    train: float  # forward + backward (+ recompute of checkpointed blocks)
    tokens_kept: int
    tokens_reconstructed: int


def block_macs(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Multiply-adds of one Transformer block on `tokens` tokens of width `dim`."""
    linear = tokens * dim * dim * (4 + 2 * mlp_ratio)  # qkv (3), proj (1), fc1 + fc2 (2 * ratio)
    attention = 2 * tokens * tokens * dim  # q k^T and attn v
    return linear + attention


def kept_count(cfg: ViTConfig, grid: tuple[int, int, int], drop_ratio: float) -> int:
    t, h, w = grid
    if drop_ratio == 0.0:
        return t * h * w
    if cfg.drop_strategy == "random":
        return num_kept(t * h * w, drop_ratio)
    return t * num_kept(h * w, drop_ratio)


def step_flops(
    cfg: ViTConfig,
    video_shape: tuple[int, int, int, int, int],
    drop_ratio: float | None = None,
    pmae_ratio: float = 0.0,
    decoder_dim: int = 192,
    decoder_depth: int = 2,
    checkpoint_blocks: int = 0,
) -> StepFlops:
    """FLOPs of one training step of `cfg` on a (B, C, T, H, W) batch (drop_ratio None = cfg's)."""
    b, c, t, h, w = video_shape
    grid = (t // cfg.tubelet_size, h // cfg.patch_size, w // cfg.patch_size)
    n_all = grid[0] * grid[1] * grid[2]
    drop_ratio = cfg.drop_ratio if drop_ratio is None else drop_ratio
    n_keep = kept_count(cfg, grid, drop_ratio)
    n_recon = num_reconstructed(n_all - n_keep, pmae_ratio) if n_keep < n_all else 0
    d = cfg.embed_dim
    cube = c * cfg.tubelet_size * cfg.patch_size**2

    embed = n_keep * cube * d
    n_enc = n_keep + (cfg.pool == "cls")
    block = block_macs(n_enc, d, cfg.mlp_ratio)
    head = d * cfg.proj_dim + cfg.num_features * cfg.num_classes
    decoder = 0.0
    if n_recon:
        decoder = n_keep * d * decoder_dim + n_recon * decoder_dim * cube
        decoder += decoder_depth * block_macs(n_keep + n_recon, decoder_dim, 4.0)

    forward = 2 * b * (embed + cfg.depth * block + head + decoder)
    train = 2 * b * (2 * embed + 3 * (cfg.depth * block + head + decoder) + checkpoint_blocks * block)
    return StepFlops(forward, train, n_keep, n_recon)
