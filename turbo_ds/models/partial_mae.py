"""Partial-MAE: reconstruct the pixels of a random fraction of the dropped tokens.

The decoder sees the encoder's kept tokens plus one mask token per *reconstructed* position, so its
cost grows with N_keep + N_recon, never with all N tokens. `pmae_ratio` = 1 is classic MAE (every
dropped token), 0 turns the loss off.
"""

from __future__ import annotations

import torch
from torch import nn

from turbo_ds.models.layers import Block, gather_cubes, init_weights
from turbo_ds.models.outputs import Output
from turbo_ds.models.pos_embed import separable_sincos
from turbo_ds.models.token_dropout import gather_tokens
from turbo_ds.models.vit import VideoViT, ViTOutput


class PartialMAEOutput(Output):
    """loss: scalar MSE over the reconstructed tokens (None if nothing was reconstructed);
    recon_idx: sorted (B, N_recon) subset of drop_idx; pred / target: (B, N_recon, t*p*p*C)."""

    def __init__(self, loss, recon_idx, pred, target):
        super().__init__(loss=loss, recon_idx=recon_idx, pred=pred, target=target)


def check_pmae_ratio(pmae_ratio: float) -> float:
    pmae_ratio = float(pmae_ratio)
    if not 0.0 <= pmae_ratio <= 1.0:
        raise ValueError(f"pmae_ratio must be in [0, 1], got {pmae_ratio}")
    return pmae_ratio


def num_reconstructed(num_dropped: int, pmae_ratio: float) -> int:
    """Dropped tokens reconstructed at `pmae_ratio`: rounded, at least one unless the ratio is 0."""
    if pmae_ratio == 0.0 or num_dropped == 0:
        return 0
    return max(1, min(num_dropped, int(num_dropped * pmae_ratio + 0.5)))


def select_recon_indices(
    drop_idx: torch.Tensor, pmae_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random subset (fresh per sample) of each row of `drop_idx`: sorted (B, N_recon)."""
    n = num_reconstructed(drop_idx.shape[1], check_pmae_ratio(pmae_ratio))
    gen_device = generator.device if generator is not None else drop_idx.device
    noise = torch.rand(drop_idx.shape, generator=generator, device=gen_device).to(drop_idx.device)
    pick = noise.argsort(dim=1)[:, :n]
    return torch.gather(drop_idx, 1, pick).sort(dim=1).values


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, t*p*p*C), tokens in the encoder's time-major (T', H', W') order."""
    b, c, t, h, w = video.shape
    tt, hh, ww = t // tubelet_size, h // patch_size, w // patch_size
    x = video.reshape(b, c, tt, tubelet_size, hh, patch_size, ww, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, T', H', W', t, p, p, c
    return x.reshape(b, tt * hh * ww, tubelet_size * patch_size * patch_size * c)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm_pix_loss target: each patch to zero mean, unit variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


class PartialMAE(nn.Module):
    """Lightweight MAE decoder + loss over a `pmae_ratio` fraction of the dropped tokens.

    `mae_weight` is carried for the task that mixes this loss with its own (the loss returned here is
    unweighted, for logging).
    """

    def __init__(
        self,
        encoder_dim: int,
        patch_size: int,
        tubelet_size: int,
        in_chans: int = 3,
        decoder_dim: int = 192,
        decoder_depth: int = 2,
        decoder_heads: int = 3,
        mlp_ratio: float = 4.0,
        pmae_ratio: float = 0.25,
        mae_weight: float = 1.0,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(
                f"decoder_dim {decoder_dim} must be divisible by 4 and by decoder_heads {decoder_heads}"
            )
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.decoder_dim = decoder_dim
        self.pmae_ratio = check_pmae_ratio(pmae_ratio)
        self.mae_weight = float(mae_weight)
        self.norm_pix_loss = norm_pix_loss
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.pred = nn.Linear(decoder_dim, tubelet_size * patch_size * patch_size * in_chans)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def for_encoder(cls, encoder: VideoViT, **kwargs: object) -> PartialMAE:
        """A decoder matching `encoder`'s width, patch and tubelet sizes."""
        cfg = encoder.cfg
        return cls(cfg.embed_dim, cfg.patch_size, cfg.tubelet_size, cfg.in_chans, **kwargs)

    def set_pmae_ratio(self, pmae_ratio: float) -> None:
        self.pmae_ratio = check_pmae_ratio(pmae_ratio)

    def pos_embed(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Fixed separable sin-cos table (1, N, decoder_dim) for `grid`."""
        return separable_sincos(self.decoder_dim, tuple(grid)).to(device)

    def forward(
        self, video: torch.Tensor, enc: ViTOutput, generator: torch.Generator | None = None
    ) -> PartialMAEOutput:
        """Reconstruct a random `pmae_ratio` share of `enc.drop_idx` from `enc.tokens` (the kept ones)."""
        if enc.drop_idx is None or enc.keep_idx is None or self.pmae_ratio == 0.0:
            return PartialMAEOutput(None, None, None, None)
        recon_idx = select_recon_indices(enc.drop_idx, self.pmae_ratio, generator)
        if recon_idx.shape[1] == 0:
            return PartialMAEOutput(None, recon_idx, None, None)
        b, n_keep, n_recon = enc.tokens.shape[0], enc.keep_idx.shape[1], recon_idx.shape[1]
        pos = self.pos_embed(enc.grid, enc.tokens.device).to(enc.tokens.dtype).expand(b, -1, -1)
        kept = self.embed(enc.tokens) + gather_tokens(pos, enc.keep_idx)
        masked = self.mask_token.expand(b, n_recon, -1) + gather_tokens(pos, recon_idx)
        x = torch.cat([kept, masked], dim=1)
        for block in self.blocks:
            x = block(x)
        pred = self.pred(self.norm(x[:, n_keep:]))

        target = gather_cubes(video, recon_idx, self.tubelet_size, self.patch_size, channels_last=True)
        if self.norm_pix_loss:
            target = normalize_patches(target.float())
        loss = (pred.float() - target).pow(2).mean()  # every token has the same size: mean == token mean
        return PartialMAEOutput(loss, recon_idx, pred, target)
