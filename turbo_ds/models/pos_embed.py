"""Separable (space + time) position embeddings: fixed sin-cos tables and resizing of learned ones."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """(len(positions), dim) table: sin of `dim // 2` frequencies, then cos (as MAE)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """(height * width, dim) table, row-major; half the channels encode y, half x (as MAE)."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, ys.flatten()), sincos_1d(dim // 2, xs.flatten())], dim=1)


def resize_spatial(table: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (1, H*W, D) spatial table to (1, H'*W', D); identity if sizes match."""
    if tuple(old_hw) == tuple(new_hw):
        return table
    dim = table.shape[-1]
    grid = table.reshape(1, old_hw[0], old_hw[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], dim).to(table.dtype)


def resize_temporal(table: torch.Tensor, new_t: int) -> torch.Tensor:
    """Linear resize of a (1, T, D) temporal table to (1, T', D); identity if sizes match."""
    if table.shape[1] == new_t:
        return table
    out = F.interpolate(table.float().transpose(1, 2), size=new_t, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(table.dtype)


def square_side(num_tokens: int, key: str) -> int:
    """Side of a square grid of `num_tokens` tokens (checkpoint tables do not store their grid)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{key}: cannot infer a square grid from {num_tokens} tokens")
    return side


@lru_cache(maxsize=32)
def separable_sincos(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """(1, T*H*W, dim) fixed table: 1D sin-cos of the frame index + 2D sin-cos of the position, time-major.

    Cached (CPU, float32): callers move it to their device and dtype.
    """
    t, h, w = grid
    table = sincos_1d(dim, torch.arange(t))[:, None, :] + sincos_2d(dim, h, w)[None, :, :]
    return table.reshape(1, t * h * w, dim)
