"""Parameter counts of a model, read off a copy built on the ``meta`` device (no memory, exact)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ParamCounts:
    """total / trainable: parameter counts; encoder_blocks: trainable count per encoder block (in
    order); after_blocks: trainable parameters backward reaches before the encoder blocks (final norm,
    projection, head, Partial-MAE decoder, other towers); largest_layer: the biggest single module's
    own parameters (what ZeRO-3 gathers at once)."""

    total: int
    trainable: int
    encoder_blocks: list[int] = field(default_factory=list)
    after_blocks: int = 0
    largest_layer: int = 0
    sizes: list[int] = field(default_factory=list)
    """numel of every parameter (ZeRO-3 keeps those under its persistence threshold whole)."""
    trainable_sizes: list[int] = field(default_factory=list)
    """numel of every trainable parameter (each gradient is allocated whole)."""

    @property
    def largest_trainable(self) -> int:
        return max(self.trainable_sizes, default=0)

    def small(self, threshold: int) -> int:
        """Parameters in tensors of at most ``threshold`` elements."""
        return sum(n for n in self.sizes if n <= threshold)


def _numel(params, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


def count_params(model: nn.Module) -> ParamCounts:
    """Counts for a model holding one or more VideoViT encoders (their blocks form the timeline)."""
    from turbo_ds.models.vit import VideoViT

    encoders = [m for m in model.modules() if isinstance(m, VideoViT)]
    params = list({id(p): p for p in model.parameters()}.values())
    total, trainable = _numel(params, False), _numel(params)
    blocks: list[int] = []
    in_blocks_or_before = 0
    for enc in encoders[:1]:  # the video encoder backward walks; others count as "after"
        blocks = [_numel(b.parameters()) for b in enc.blocks]
        before = [enc.patch_embed, enc.norm_pre]
        in_blocks_or_before = sum(blocks) + sum(_numel(m.parameters()) for m in before)
        in_blocks_or_before += sum(
            p.numel()
            for p in (enc.cls_token, enc.pos_embed_spatial, enc.pos_embed_temporal, enc.pos_embed_cls)
            if p is not None and p.requires_grad
        )
    largest = max((_numel(m.parameters(recurse=False), False) for m in model.modules()), default=0)
    sizes = [p.numel() for p in params]
    grads = [p.numel() for p in params if p.requires_grad]
    return ParamCounts(total, trainable, blocks, trainable - in_blocks_or_before, largest, sizes, grads)


def count_on_meta(build) -> ParamCounts:
    """``count_params(build())`` with the model built on the meta device."""
    with torch.device("meta"):
        return count_params(build())
