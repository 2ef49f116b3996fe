"""`ViTConfig`: the typed description of a VideoViT, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

POS_EMBEDS = ("learned", "sincos")
POOLS = ("cls", "mean")
DROP_STRATEGIES = ("random", "tube", "frame_uniform")
ACTIVATIONS = ("gelu", "quick_gelu")


@dataclass
class ViTConfig:
    """Shape and behaviour of a video ViT.

    `img_size` and `num_frames` are the sizes the position embeddings are created for; other sizes are
    accepted at run time (learned tables are interpolated, sin-cos tables recomputed).
    """

    img_size: int = 224
    num_frames: int = 16
    patch_size: int = 16
    tubelet_size: int = 2  # frames per token; 1 = per-frame image patches
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    pos_embed: str = "sincos"  # "learned" | "sincos" (fixed, separable space + time)
    pool: str = "cls"  # "cls" (a CLS token) | "mean" (mean of the kept patch tokens)
    num_classes: int = 0  # 0 = no head: forward() returns pooled features
    drop_ratio: float = 0.0  # token dropout ratio in training, in [0, 1)
    drop_strategy: str = "random"  # "random" | "tube" | "frame_uniform"
    # Options that exist so that image checkpoints (timm, open_clip) load exactly.
    norm_eps: float = 1e-6  # timm / VideoMAE use 1e-6, open_clip 1e-5
    act: str = "gelu"  # "gelu" | "quick_gelu" (OpenAI CLIP)
    pre_norm: bool = False  # LayerNorm on the embedded tokens before the blocks (CLIP's ln_pre)
    patch_bias: bool = True  # bias in the tubelet projection (CLIP has none)
    proj_dim: int = 0  # > 0: bias-free projection of the pooled feature (CLIP's visual.proj)

    def __post_init__(self) -> None:
        errors = []
        for name in ("img_size", "num_frames", "patch_size", "tubelet_size", "in_chans", "embed_dim"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.depth < 0 or self.num_heads <= 0:
            errors.append(f"depth must be >= 0 and num_heads > 0, got {self.depth}, {self.num_heads}")
        elif self.embed_dim % self.num_heads:
            errors.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            errors.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            errors.append(
                f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            errors.append(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.drop_ratio < 1.0:
            errors.append(f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        for name, allowed in (
            ("pos_embed", POS_EMBEDS),
            ("pool", POOLS),
            ("drop_strategy", DROP_STRATEGIES),
            ("act", ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                errors.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_classes < 0 or self.proj_dim < 0:
            errors.append("num_classes and proj_dim must be >= 0")
        if errors:
            raise ValueError("invalid ViTConfig: " + "; ".join(errors))

    @property
    def grid(self) -> tuple[int, int, int]:
        """The (T', H', W') token grid at the configured input size."""
        return (
            self.num_frames // self.tubelet_size,
            self.img_size // self.patch_size,
            self.img_size // self.patch_size,
        )

    @property
    def num_features(self) -> int:
        """Width of the pooled feature (after the optional projection)."""
        return self.proj_dim or self.embed_dim
