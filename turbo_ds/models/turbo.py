"""TurboModel: the encoder plus the optional Partial-MAE head, the unit a task holds."""

from __future__ import annotations

import torch
from torch import nn

from turbo_ds.models.outputs import Output
from turbo_ds.models.partial_mae import PartialMAE
from turbo_ds.models.vit import VideoViT


class TurboOutput(Output):
    """logits: head output, or pooled features if the encoder has no head; features: pooled (B, F);
    mae_loss: unweighted Partial-MAE loss, None when off or nothing was dropped (eval);
    keep_idx / drop_idx / recon_idx: which tokens were seen / not seen / reconstructed (None in eval);
    tokens: the encoder's kept patch tokens (B, N_keep, D)."""

    def __init__(
        self,
        logits: torch.Tensor,
        features: torch.Tensor,
        mae_loss: torch.Tensor | None,
        keep_idx: torch.Tensor | None,
        drop_idx: torch.Tensor | None,
        recon_idx: torch.Tensor | None,
        tokens: torch.Tensor | None = None,
    ):
        super().__init__(
            logits=logits,
            features=features,
            mae_loss=mae_loss,
            keep_idx=keep_idx,
            drop_idx=drop_idx,
            recon_idx=recon_idx,
            tokens=tokens,
        )


class TurboModel(nn.Module):
    def __init__(self, encoder: VideoViT, pmae: PartialMAE | None = None):
        super().__init__()
        self.encoder = encoder
        self.pmae = pmae

    @property
    def mae_weight(self) -> float:
        """Weight for mixing `mae_loss` into a task loss (0 without a Partial-MAE head)."""
        return self.pmae.mae_weight if self.pmae is not None else 0.0

    def set_drop_ratio(self, drop_ratio: float) -> None:
        self.encoder.set_drop_ratio(drop_ratio)

    def weighted_loss(self, task_loss: torch.Tensor, out: TurboOutput) -> torch.Tensor:
        """task_loss + mae_weight * mae_loss (just task_loss when there is no MAE loss)."""
        return task_loss if out.mae_loss is None else task_loss + self.mae_weight * out.mae_loss

    def forward(self, video: torch.Tensor) -> TurboOutput:
        enc = self.encoder(video, return_features=True)
        mae_loss = recon_idx = None
        if self.pmae is not None and self.training:
            rec = self.pmae(video, enc)
            mae_loss, recon_idx = rec.loss, rec.recon_idx
        return TurboOutput(
            logits=enc.logits,
            features=enc.pooled,
            mae_loss=mae_loss,
            keep_idx=enc.keep_idx,
            drop_idx=enc.drop_idx,
            recon_idx=recon_idx,
            tokens=enc.tokens,
        )
