"""TemporalHead: a small Transformer over a sequence of clip features (the two-stage baseline's head)."""

from __future__ import annotations

import torch
from torch import nn

from turbo_ds.models.layers import Block
from turbo_ds.models.pos_embed import resize_temporal


class TemporalHead(nn.Module):
    """(B, K, F) clip features -> (B, num_classes): linear to ``dim`` + learned temporal positions
    (resized when K differs from ``num_clips``), ``depth`` Transformer blocks, mean pool, norm, linear."""

    def __init__(self, in_dim: int, num_clips: int, num_classes: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, num_clips, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.proj(feats) + resize_temporal(self.pos, feats.shape[1])
        for block in self.blocks:
            x = block(x)
        return self.fc(self.norm(x.mean(dim=1)))
