"""AdamW parameter groups (no decay on norms/biases/position embeddings, layer-wise lr decay) and the
warmup + cosine schedule, stepped once per optimizer step.

Layer-wise lr decay (BEiT / VideoMAE fine-tuning): the encoder's patch embedding and position
embeddings are layer 0, ``blocks.i`` is layer ``i + 1``, everything after the last block (final norm,
head, Partial-MAE decoder) is layer ``L + 1``; a parameter at layer ``l`` gets ``lr x decay^(L + 1 - l)``.
Each group carries an ``lr_scale`` that the scheduler multiplies in.
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "pos_embedding", "temporal_embed")
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "temporal_embed")


def _encoder_part(name: str, encoder_prefix: str) -> str | None:
    """The part of ``name`` after the encoder prefix, or None when the parameter is not in the encoder."""
    if encoder_prefix == "":
        return name
    marker = encoder_prefix.rstrip(".") + "."
    idx = name.find(marker)
    if idx != 0 and (idx < 0 or name[idx - 1] != "."):
        return None
    return name[idx + len(marker) :]


def num_encoder_layers(module: nn.Module, encoder_prefix: str = "encoder") -> int:
    ids = set()
    for name, _ in module.named_parameters():
        part = _encoder_part(name, encoder_prefix)
        if part is not None and (m := _BLOCK_RE.search("." + part)):
            ids.add(int(m.group(1)))
    return max(ids) + 1 if ids else 0


def layer_id(name: str, num_layers: int, encoder_prefix: str = "encoder") -> int:
    """0 for embeddings, i + 1 for encoder block i, num_layers + 1 for the rest."""
    part = _encoder_part(name, encoder_prefix)
    if part is None:
        return num_layers + 1
    if any(part.startswith(e) for e in _EMBED_NAMES):
        return 0
    if m := _BLOCK_RE.search("." + part):
        return int(m.group(1)) + 1
    return num_layers + 1


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases (1-d) and position embeddings / special tokens get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf in _NO_DECAY_NAMES or any(n in name for n in _NO_DECAY_NAMES)


def param_groups(
    module: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    encoder_prefix: str = "encoder",
) -> list[dict[str, Any]]:
    """AdamW groups keyed by (decay?, layer); each has ``params``, ``weight_decay``, ``lr_scale``, ``name``."""
    num_layers = num_encoder_layers(module, encoder_prefix) if layer_decay < 1.0 else 0
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        nd = is_no_decay(name, p)
        lid = layer_id(name, num_layers, encoder_prefix) if layer_decay < 1.0 else 0
        key = (nd, lid)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay < 1.0 else 1.0
            groups[key] = {
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if nd else weight_decay,
                "lr_scale": scale,
                "name": f"{'no_decay' if nd else 'decay'}_layer{lid}",
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    out = [groups[k] for k in sorted(groups)]
    for g in out:
        del g["param_names"]
    return out


def warmup_cosine(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for 0-based optimizer step ``step``: linear warmup to ``base_lr``, cosine to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every group's ``lr = warmup_cosine(step) x lr_scale``; ``step()`` after each optimizer step.

    Checkpointed by DeepSpeed through ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, optimizer, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.base_lr, self.min_lr = base_lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        lr = warmup_cosine(self.last_step, self.base_lr, self.min_lr, self.warmup_steps, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def step(self, *_: Any, **__: Any) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def current_lr(self) -> float:
        """The un-scaled (peak group) learning rate in effect for the next optimizer step."""
        return warmup_cosine(self.last_step, self.base_lr, self.min_lr, self.warmup_steps, self.total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
