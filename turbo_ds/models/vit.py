"""VideoViT: a ViT over tubelet tokens with separable space-time position embeddings and token dropout."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from turbo_ds.models.config import ViTConfig
from turbo_ds.models.layers import Block, PatchEmbed3D, init_weights
from turbo_ds.models.outputs import Output
from turbo_ds.models.pos_embed import resize_spatial, resize_temporal, separable_sincos
from turbo_ds.models.token_dropout import TokenDropout, check_drop_ratio, gather_tokens

# (block, tokens) -> tokens; set by turbo_ds.engine.checkpointing so the model never imports deepspeed.
CheckpointFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class ViTOutput(Output):
    """What the encoder saw and produced.

    tokens: (B, N_keep, D) final-normed patch tokens (no CLS), in `keep_idx` order; all N in eval.
    pooled: (B, num_features) CLS or mean-pooled feature (after the optional projection).
    keep_idx / drop_idx: sorted (B, N_keep) / (B, N_drop) indices into the flattened (T', H', W') grid,
        None when nothing was dropped (eval mode or drop_ratio 0).
    grid: the (T', H', W') token grid of this input.
    logits: the head's output (B, num_classes), or `pooled` when there is no head.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        pooled: torch.Tensor,
        keep_idx: torch.Tensor | None,
        drop_idx: torch.Tensor | None,
        grid: tuple[int, int, int],
        logits: torch.Tensor | None = None,
    ):
        super().__init__(
            tokens=tokens, pooled=pooled, keep_idx=keep_idx, drop_idx=drop_idx, grid=grid, logits=logits
        )


class VideoViT(nn.Module):
    """Video Transformer for (B, C, T, H, W) clips; any T, H, W divisible by the tubelet/patch size."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed3D(cfg.in_chans, d, cfg.patch_size, cfg.tubelet_size, cfg.patch_bias)
        t, h, w = cfg.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        if cfg.pos_embed == "learned":
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, d))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, d))
            self.pos_embed_cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        else:
            self.pos_embed_spatial = self.pos_embed_temporal = self.pos_embed_cls = None
        self.token_dropout = TokenDropout(cfg.drop_ratio, cfg.drop_strategy)
        self.norm_pre = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist() if cfg.depth else []
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, r, cfg.norm_eps, cfg.act) for r in rates
        )
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.proj = nn.Linear(d, cfg.proj_dim, bias=False) if cfg.proj_dim else None
        self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes else None
        self.checkpoint_fn: CheckpointFn | None = None
        self.checkpoint_blocks = 0

        self.apply(init_weights)
        for p in (self.cls_token, self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_cls):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    # ---- configuration -------------------------------------------------------------------------
    @property
    def drop_ratio(self) -> float:
        return self.token_dropout.drop_ratio

    def set_drop_ratio(self, drop_ratio: float) -> None:
        """Change the training-time token dropout ratio (e.g. 0 for a final dense phase)."""
        self.token_dropout.drop_ratio = check_drop_ratio(drop_ratio)

    def set_checkpointing(self, fn: CheckpointFn | None, num_blocks: int) -> None:
        """Run the first `num_blocks` blocks through `fn(block, x)` when gradients are enabled."""
        if not 0 <= num_blocks <= len(self.blocks):
            raise ValueError(f"num_blocks must be in [0, {len(self.blocks)}], got {num_blocks}")
        self.checkpoint_fn, self.checkpoint_blocks = fn, num_blocks

    def no_weight_decay(self) -> set[str]:
        """Parameter names that conventionally get no weight decay."""
        names = {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_cls"}
        return {n for n, _ in self.named_parameters() if n in names}

    # ---- forward ---------------------------------------------------------------------------------
    def check_input(self, video: torch.Tensor) -> None:
        """Raise ValueError unless `video` is (B, in_chans, T, H, W) with divisible T, H, W."""
        cfg = self.cfg
        if video.ndim != 5 or video.shape[1] != cfg.in_chans:
            raise ValueError(
                f"expected video of shape (B, {cfg.in_chans}, T, H, W), got {tuple(video.shape)}"
            )
        _, _, t, h, w = video.shape
        if t % cfg.tubelet_size or h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(
                f"video shape {tuple(video.shape)}: T must be a multiple of tubelet_size {cfg.tubelet_size} "
                f"and H, W multiples of patch_size {cfg.patch_size}"
            )

    def pos_embed(
        self, grid: tuple[int, int, int], t_offset: int = 0, t_total: int | None = None
    ) -> torch.Tensor:
        """(1, T'*H'*W', D) position embedding for `grid`: spatial table + temporal table, broadcast.

        `t_offset` / `t_total` (token steps): `grid` is the part starting at step `t_offset` of a clip
        of `t_total` steps (default: the whole clip), so a temporal chunk gets the positions it has in
        the whole clip. A learned temporal table is resized to `t_total`, then sliced."""
        t, h, w = grid
        t_total = t_offset + t if t_total is None else t_total
        if t_offset < 0 or t_offset + t > t_total:
            raise ValueError(f"temporal part [{t_offset}, {t_offset + t}) is not inside [0, {t_total})")
        d = self.cfg.embed_dim
        if self.pos_embed_spatial is None:
            ref = self.patch_embed.proj.weight
            table = separable_sincos(d, (t_total, h, w))[:, t_offset * h * w : (t_offset + t) * h * w]
            return table.to(ref.device, ref.dtype)
        _, gh, gw = self.cfg.grid
        spatial = resize_spatial(self.pos_embed_spatial, (gh, gw), (h, w))
        temporal = resize_temporal(self.pos_embed_temporal, t_total)[:, t_offset : t_offset + t]
        return (temporal[:, :, None, :] + spatial[:, None, :, :]).reshape(1, t * h * w, d)

    def _token_steps(self, frames: int, name: str) -> int:
        if frames % self.cfg.tubelet_size:
            raise ValueError(f"{name} = {frames} must be a multiple of tubelet_size {self.cfg.tubelet_size}")
        return frames // self.cfg.tubelet_size

    def forward_features(
        self,
        video: torch.Tensor,
        *,
        t_offset: int = 0,
        t_total: int | None = None,
        drop_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> ViTOutput:
        """See :meth:`forward` for the keywords."""
        self.check_input(video)
        grid = self.patch_embed.grid(video)
        # Drop before embedding: dropped tubelets cost neither the projection nor memory.
        keep_idx, drop_idx = self.token_dropout.sample(
            video.shape[0], grid, video.device, drop_ratio=drop_ratio, generator=generator
        )
        x = self.patch_embed(video, keep_idx)
        steps_total = None if t_total is None else self._token_steps(t_total, "t_total")
        pos = self.pos_embed(grid, self._token_steps(t_offset, "t_offset"), steps_total)
        x = x + (pos if keep_idx is None else gather_tokens(pos.expand(x.shape[0], -1, -1), keep_idx))
        if self.cls_token is not None:
            cls = self.cls_token if self.pos_embed_cls is None else self.cls_token + self.pos_embed_cls
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm_pre(x)
        use_ckpt = self.checkpoint_fn is not None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            x = self.checkpoint_fn(block, x) if use_ckpt and i < self.checkpoint_blocks else block(x)
        x = self.norm(x)
        if self.cls_token is not None:
            pooled, tokens = x[:, 0], x[:, 1:]
        else:
            tokens = x
            pooled = tokens.mean(dim=1)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return ViTOutput(tokens, pooled, keep_idx, drop_idx, grid)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled) if self.head is not None else pooled

    def forward(
        self,
        video: torch.Tensor,
        return_features: bool = False,
        *,
        t_offset: int = 0,
        t_total: int | None = None,
        drop_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | ViTOutput:
        """Logits (B, num_classes), or pooled features (B, num_features) when there is no head; with
        ``return_features`` the whole :class:`ViTOutput` (``logits`` filled in). Containers call the
        encoder this way (through ``forward``, so ZeRO-3's hooks see it), never ``forward_features``.

        t_offset, t_total (frames, multiples of tubelet_size): ``video`` is the temporal chunk starting
        at frame ``t_offset`` of a clip of ``t_total`` frames; its tokens get the temporal positions of
        that place in the whole clip (chunked long-video evaluation). Default: the whole clip.
        drop_ratio, generator: token dropout at ``drop_ratio`` whatever the mode, drawn from
        ``generator`` (test-time averaging over draws); None = the training-time behaviour."""
        out = self.forward_features(
            video, t_offset=t_offset, t_total=t_total, drop_ratio=drop_ratio, generator=generator
        )
        out.logits = self.forward_head(out.pooled)
        return out if return_features else out.logits
