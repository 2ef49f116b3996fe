"""Activation checkpointing for VideoViT blocks: `torch`, `deepspeed` or `fairscale`.

The model only exposes a hook (`VideoViT.set_checkpointing(fn, num_blocks)`); the implementations live
here so that the model never imports deepspeed or fairscale (both are imported lazily, on use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from turbo_ds.models.vit import VideoViT

IMPLS = ("torch", "deepspeed", "fairscale")


def _torch_fn(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Non-reentrant: works with inputs that do not require grad and with torch.compile / ZeRO-3 hooks.
    return torch_checkpoint(block, x, use_reentrant=False)


def configure_deepspeed(ds_config: Mapping[str, Any] | None = None) -> None:
    """Set deepspeed.checkpointing's options from a ds_config's `activation_checkpointing` section."""
    import deepspeed

    section = dict((ds_config or {}).get("activation_checkpointing", {}))
    deepspeed.checkpointing.configure(
        None,
        partition_activations=bool(section.get("partition_activations", False)),
        contiguous_checkpointing=bool(section.get("contiguous_memory_optimization", False)),
        num_checkpoints=section.get("number_checkpoints"),
        checkpoint_in_cpu=bool(section.get("cpu_checkpointing", False)),
        synchronize=bool(section.get("synchronize_checkpoint_boundary", False)),
        profile=bool(section.get("profile", False)),
    )


def _deepspeed_fn(ds_config: Mapping[str, Any] | None, offload_to_cpu: bool) -> Callable:
    import deepspeed
    import deepspeed.comm as dist

    section = dict((ds_config or {}).get("activation_checkpointing", {}))
    if offload_to_cpu:
        section["cpu_checkpointing"] = True
    if dist.is_initialized():
        configure_deepspeed({"activation_checkpointing": section})
    elif any(
        section.get(k)
        for k in ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization")
    ):
        # deepspeed.checkpointing.configure needs deepspeed.comm; its defaults need nothing.
        raise RuntimeError(
            "deepspeed activation checkpointing options need deepspeed.init_distributed() first"
        )

    def fn(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return deepspeed.checkpointing.checkpoint(block, x)

    return fn


def _wrap_fairscale(vit: VideoViT, num_blocks: int, offload_to_cpu: bool) -> None:
    from fairscale.nn.checkpoint import checkpoint_wrapper

    # checkpoint_wrapper patches the block's forward in place (parameter names are unchanged); a block
    # wrapped once stays wrapped, so re-applying with fewer blocks cannot unwrap it.
    for block in list(vit.blocks)[:num_blocks]:
        if not getattr(block, "_turbo_fairscale_ckpt", False):
            checkpoint_wrapper(block, offload_to_cpu=offload_to_cpu)
            block._turbo_fairscale_ckpt = True


def apply_activation_checkpointing(
    model: nn.Module,
    impl: str | None,
    num_blocks: int | None = None,
    offload_to_cpu: bool = False,
    ds_config: Mapping[str, Any] | None = None,
) -> int:
    """Checkpoint the first `num_blocks` blocks (None = all) of every VideoViT inside `model`.

    impl: `torch` (non-reentrant torch.utils.checkpoint), `deepspeed` (deepspeed.checkpointing,
    configured from `ds_config`'s `activation_checkpointing` section if given) or `fairscale`
    (checkpoint_wrapper; `offload_to_cpu` moves the saved block inputs to host memory). None or
    num_blocks 0 turns torch / deepspeed checkpointing off. Returns the number of blocks checkpointed.
    Only encoder blocks are checkpointed: the Partial-MAE decoder is small by design.
    """
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"checkpointing impl must be one of {IMPLS} or None, got {impl!r}")
    vits = [m for m in model.modules() if isinstance(m, VideoViT)]
    if not vits:
        raise ValueError(f"no VideoViT found in {type(model).__name__}")
    total = 0
    for vit in vits:
        n = len(vit.blocks) if num_blocks is None else num_blocks
        if not 0 <= n <= len(vit.blocks):
            raise ValueError(f"num_blocks must be in [0, {len(vit.blocks)}] (or None = all), got {n}")
        if impl is None or n == 0:
            vit.set_checkpointing(None, 0)
            continue
        if impl == "torch":
            vit.set_checkpointing(_torch_fn, n)
        elif impl == "deepspeed":
            vit.set_checkpointing(_deepspeed_fn(ds_config, offload_to_cpu), n)
        else:
            vit.set_checkpointing(None, 0)
            _wrap_fairscale(vit, n, offload_to_cpu)
        total += n
    return total
