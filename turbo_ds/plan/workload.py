"""What one rank computes in one training micro step: the model's shape and the data's, nothing else.

Both the planner's arithmetic (:mod:`turbo_ds.plan.activations`) and the measured model core
(:mod:`turbo_ds.measure.core_step`, :mod:`turbo_ds.measure.probe`) take a :class:`Workload`, so a
prediction and its measurement describe the same step by construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from turbo_ds.models.config import ViTConfig
from turbo_ds.models.token_dropout import num_kept

PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTION_KERNELS = ("efficient", "math")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class DecoderShape:
    """The Partial-MAE decoder (see :class:`turbo_ds.models.PartialMAE`)."""

    dim: int = 192
    depth: int = 2
    heads: int = 3
    mlp_ratio: float = 4.0
    pmae_ratio: float = 0.25


@dataclass(frozen=True)
class Workload:
    """One rank's micro step. ``vit`` is the encoder as built for the run (its ``num_frames`` and
    ``img_size`` are the clip's), ``drop_ratio`` the training token dropout, ``checkpoint_blocks`` the
    encoder blocks run under activation checkpointing, ``decoder`` the Partial-MAE head (None = off).
    ``precision``: the dtype activations are computed in (bf16/fp16 = the model runs in that dtype,
    as DeepSpeed's bf16/fp16 engines do). ``attention``: ``efficient`` (flash / memory-efficient SDPA:
    O(N) memory) or ``math`` (the N x N matrices are materialised). ``device``: ``cuda`` or ``cpu`` (on
    the CPU the cached sin-cos position tables live in the same memory as the tensors)."""

    vit: ViTConfig
    batch_size: int
    drop_ratio: float = 0.0
    checkpoint_blocks: int = 0
    decoder: DecoderShape | None = None
    precision: str = "fp32"
    attention: str = "efficient"
    device: str = "cuda"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0 <= self.checkpoint_blocks <= self.vit.depth:
            raise ValueError(
                f"checkpoint_blocks must be in [0, {self.vit.depth}], got {self.checkpoint_blocks}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu, got {self.device!r}")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention must be one of {ATTENTION_KERNELS}, got {self.attention!r}")

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.vit.num_frames

    @property
    def tokens(self) -> int:
        """Patch tokens of one clip (all of them)."""
        t, h, w = self.vit.grid
        return t * h * w

    @property
    def kept(self) -> int:
        """Patch tokens the encoder processes per clip (token dropout applied; as in training)."""
        if self.drop_ratio <= 0:
            return self.tokens
        t, h, w = self.vit.grid
        if self.vit.drop_strategy == "random":
            return num_kept(t * h * w, self.drop_ratio)
        return t * num_kept(h * w, self.drop_ratio)

    @property
    def seq_len(self) -> int:
        """Encoder sequence length: kept tokens plus the CLS token."""
        return self.kept + (1 if self.vit.pool == "cls" else 0)

    @property
    def reconstructed(self) -> int:
        """Tokens Partial-MAE reconstructs per clip (0 without it or without dropout)."""
        if self.decoder is None or self.kept == self.tokens:
            return 0
        from turbo_ds.models.partial_mae import num_reconstructed

        return num_reconstructed(self.tokens - self.kept, self.decoder.pmae_ratio)

    @property
    def act_bytes(self) -> int:
        return BYTES[self.precision]

    @property
    def pixels_per_token(self) -> int:
        c = self.vit
        return c.in_chans * c.tubelet_size * c.patch_size * c.patch_size

    def replace(self, **changes) -> Workload:
        """A copy with some fields changed; ``num_frames`` / ``img_size`` change the clip."""
        clip = {k: changes.pop(k) for k in ("num_frames", "img_size") if k in changes}
        vit = dataclasses.replace(self.vit, **clip) if clip else self.vit
        if "drop_ratio" in changes:
            vit = dataclasses.replace(vit, drop_ratio=changes["drop_ratio"])
        return dataclasses.replace(self, vit=vit, **changes)
