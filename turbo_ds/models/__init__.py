"""Models: VideoViT with token dropout, Partial-MAE, the TurboModel wrapper, presets and weight import.

Only torch is needed here; timm / open_clip are never imported (their checkpoints are plain state dicts).
"""

from turbo_ds.models.config import ViTConfig
from turbo_ds.models.partial_mae import (
    PartialMAE,
    PartialMAEOutput,
    normalize_patches,
    patchify,
    select_recon_indices,
)
from turbo_ds.models.pretrained import LoadReport, inflate_patch_weight, load_pretrained
from turbo_ds.models.registry import create_model, list_models, model_config, register_model
from turbo_ds.models.token_dropout import TokenDropout, gather_tokens, num_kept, token_dropout_indices
from turbo_ds.models.turbo import TurboModel, TurboOutput
from turbo_ds.models.vit import VideoViT, ViTOutput

__all__ = [
    "LoadReport",
    "PartialMAE",
    "PartialMAEOutput",
    "TokenDropout",
    "TurboModel",
    "TurboOutput",
    "ViTConfig",
    "ViTOutput",
    "VideoViT",
    "create_model",
    "gather_tokens",
    "inflate_patch_weight",
    "list_models",
    "load_pretrained",
    "model_config",
    "normalize_patches",
    "num_kept",
    "patchify",
    "register_model",
    "select_recon_indices",
    "token_dropout_indices",
]

# The text tower wraps open_clip, which text_tower.py imports lazily (inside its functions).
from turbo_ds.models.text_tower import (  # noqa: E402
    TextTokenizer,
    TextTower,
    build_text_tower,
    register_model_configs,
)

__all__ += ["TextTokenizer", "TextTower", "build_text_tower", "register_model_configs"]
