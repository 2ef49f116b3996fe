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
    groups: list[list[int]] = field(default_factory=list)
    """numel of the trainable parameters of each optimizer parameter group, in the optimizer's order
    (:func:`turbo_ds.engine.optim.param_groups`): DeepSpeed flattens, partitions and steps each group
    apart. Empty: one group of every trainable parameter."""

    @property
    def largest_trainable(self) -> int:
        return max(self.trainable_sizes, default=0)

    @property
    def optimizer_groups(self) -> list[list[int]]:
        return self.groups or [list(self.trainable_sizes) or [self.trainable]]

    def group_partitions(self, world: int) -> list[int]:
        """Elements of each group's ZeRO partition on one rank (the flat group split ``world`` ways)."""
        return [-(-sum(g) // world) for g in self.optimizer_groups]

    def in_partition(self, world: int) -> int:
        """Elements of the parameters that overlap one rank's partitions, whole (ZeRO-1/2's
        ``params_in_partition``, whose gradients DeepSpeed keeps in one buffer): the largest rank's."""
        ranks = [0] * world
        for group, part in zip(self.optimizer_groups, self.group_partitions(world), strict=True):
            start = 0
            for n in group:
                end = start + n
                for r in range(start // part, min(world, -(-end // part))) if part else ():
                    ranks[r] += n
                start = end
        return max(ranks)

    def small(self, threshold: int) -> int:
        """Parameters in tensors of at most ``threshold`` elements."""
        return sum(n for n in self.sizes if n <= threshold)


def _numel(params, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


def count_params(model: nn.Module, groups: list[dict] | None = None) -> ParamCounts:
    """Counts for a model holding one or more VideoViT encoders (their blocks form the timeline);
    ``groups``: the optimizer's parameter groups (dicts with ``params``), if known."""
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
    by_group = [[p.numel() for p in g["params"] if p.requires_grad] for g in groups or []]
    return ParamCounts(
        total, trainable, blocks, trainable - in_blocks_or_before, largest, sizes, grads, by_group
    )


def count_on_meta(build, layer_decay: float | None = None) -> ParamCounts:
    """``count_params(build())`` with the model built on the meta device; with ``layer_decay``, the
    parameter groups the trainer's optimizer would get (:func:`turbo_ds.engine.optim.param_groups`)."""
    with torch.device("meta"):
        model = build()
    if layer_decay is None:
        return count_params(model)
    from turbo_ds.engine.optim import param_groups

    return count_params(model, param_groups(model, 0.0, layer_decay))
