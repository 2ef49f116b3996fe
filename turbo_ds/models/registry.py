"""Named model presets: `create_model("vit_small_patch16", num_frames=32, drop_ratio=0.75)`."""

from __future__ import annotations

import dataclasses

from turbo_ds.models.config import ViTConfig
from turbo_ds.models.vit import VideoViT

_PRESETS: dict[str, dict] = {
    # Tiny: for tests and smoke runs (4 frames of 32x32 -> 2x4x4 = 32 tokens).
    "vit_debug": dict(
        img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=2
    ),
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16),
}


def register_model(name: str, **config: object) -> None:
    """Add a preset (fields of ViTConfig); the name must be new."""
    if name in _PRESETS:
        raise ValueError(f"model {name!r} is already registered")
    ViTConfig(**config)  # validate now, not at first use
    _PRESETS[name] = dict(config)


def list_models() -> list[str]:
    return sorted(_PRESETS)


def model_config(name: str, **overrides: object) -> ViTConfig:
    """The preset's ViTConfig with `overrides` applied; unknown names or fields raise ValueError."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ViTConfig field(s) {unknown} for model {name!r}")
    return ViTConfig(**{**_PRESETS[name], **overrides})


def create_model(name: str, **overrides: object) -> VideoViT:
    return VideoViT(model_config(name, **overrides))
