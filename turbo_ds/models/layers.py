"""Transformer building blocks: tubelet embedding, attention, MLP, drop-path and the pre-norm block.

Parameter names follow timm's VisionTransformer (`norm1`, `attn.qkv`, `mlp.fc1`, ...) so that image
checkpoints map onto them by renaming only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation; needed to reproduce CLIP checkpoints exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class PatchEmbed3D(nn.Module):
    """Conv3d over non-overlapping `tubelet x patch x patch` cubes: (B, C, T, H, W) -> (B, N, D).

    With `keep_idx`, only the kept cubes are embedded (as one matmul with the same kernel), so that
    token dropout also saves the embedding's compute.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, tubelet_size: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel, bias=bias)

    def grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        _, _, t, h, w = video.shape
        return t // self.tubelet_size, h // self.patch_size, w // self.patch_size

    def forward(self, video: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.proj.weight.dtype  # e.g. fp32 clips into a bf16 model
        if keep_idx is None:
            return self.proj(video.to(dtype)).flatten(2).transpose(1, 2)
        # Select, then cast: a cast copy of the whole long video would cost more than the kept cubes.
        cubes = gather_cubes(video, keep_idx, self.tubelet_size, self.patch_size).to(dtype)
        return F.linear(cubes, self.proj.weight.flatten(1), self.proj.bias)  # kernel is (D, c*t*p*p)


def gather_cubes(
    video: torch.Tensor, idx: torch.Tensor, tubelet_size: int, patch_size: int, channels_last: bool = False
) -> torch.Tensor:
    """The ``tubelet x patch x patch`` cubes of ``video`` (B, C, T, H, W) at token indices ``idx`` (B, n)
    into the time-major (T', H', W') grid: (B, n, C*t*p*p), or (B, n, t*p*p*C) with ``channels_last``.

    Indexes the cubes in place instead of rearranging the whole video first, so only the ``n`` selected
    cubes are copied: with 90% token dropout on a long video the full rearranged copy would be the
    largest tensor of the step."""
    b, c, t, h, w = video.shape
    tt, hh, ww = t // tubelet_size, h // patch_size, w // patch_size
    grid = video.reshape(b, c, tt, tubelet_size, hh, patch_size, ww, patch_size)
    rows = torch.arange(b, device=idx.device)[:, None]
    # Advanced indices split by slices: the result is (B, n, C, t, p, p), the indexed dims first.
    cubes = grid[rows, :, idx // (hh * ww), :, (idx // ww) % hh, :, idx % ww, :]
    if channels_last:
        cubes = cubes.permute(0, 1, 3, 4, 5, 2)
    return cubes.reshape(b, idx.shape[1], -1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)), each with drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        act: str = "gelu",
    ):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate:.3f}"


def init_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: truncated-normal linears, unit LayerNorms, Xavier tubelet projection."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
