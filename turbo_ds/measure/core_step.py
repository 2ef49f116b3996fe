"""The model core's training step, written once: the probe, the model benchmark, the GPU training check
and the torch-only test all run it.

A :class:`~turbo_ds.plan.Workload` says what to build (encoder, token dropout, checkpointed blocks,
Partial-MAE decoder, dtype): :func:`build_model` builds that TurboModel, :func:`build_core` adds AdamW,
and :func:`train_step` runs one step: forward with token dropout (+ Partial-MAE), cross-entropy plus
the weighted Partial-MAE loss, backward, optimizer step. Imports torch and turbo_ds's models only
(no deepspeed, numpy or YAML), so it runs on a GPU machine that has nothing but PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from turbo_ds.engine.checkpointing import apply_activation_checkpointing
from turbo_ds.models import PartialMAE, TurboModel, VideoViT, ViTConfig
from turbo_ds.plan.workload import DecoderShape, Workload

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def core_workload(
    vit: ViTConfig,
    batch_size: int,
    pmae_ratio: float = 0.0,
    checkpointing: bool = False,
    precision: str = "fp32",
    device: str = "cpu",
) -> Workload:
    """The workload of an encoder config such as :func:`turbo_ds.models.model_config` gives (its
    ``drop_ratio`` is the training one): Partial-MAE with the default decoder at ``pmae_ratio`` (off at
    0, or when nothing is dropped), every block checkpointed or none."""
    pmae_on = pmae_ratio > 0 and vit.drop_ratio > 0
    return Workload(
        vit,
        batch_size,
        drop_ratio=vit.drop_ratio,
        checkpoint_blocks=vit.depth if checkpointing else 0,
        decoder=DecoderShape(pmae_ratio=pmae_ratio) if pmae_on else None,
        precision=precision,
        device=device,
    )


def build_model(
    workload: Workload, device: str | torch.device = "cpu", mae_weight: float = 1.0
) -> TurboModel:
    """The TurboModel of ``workload`` on ``device``, in its precision (bf16/fp16: the weights too, as
    DeepSpeed's bf16 engine runs the model), its blocks checkpointed, in training mode with the
    workload's drop ratio. ``mae_weight`` scales the Partial-MAE loss in :func:`train_step`."""
    encoder = VideoViT(workload.vit)
    pmae = None
    if workload.decoder is not None:
        d = workload.decoder
        pmae = PartialMAE.for_encoder(
            encoder,
            decoder_dim=d.dim,
            decoder_depth=d.depth,
            decoder_heads=d.heads,
            mlp_ratio=d.mlp_ratio,
            pmae_ratio=d.pmae_ratio,
            mae_weight=mae_weight,
        )
    model = TurboModel(encoder, pmae).to(device=device, dtype=DTYPES[workload.precision])
    apply_activation_checkpointing(model, "torch", workload.checkpoint_blocks)
    model.train()
    model.encoder.set_drop_ratio(workload.drop_ratio)
    return model


def build_core(
    workload: Workload,
    device: str | torch.device = "cpu",
    *,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    fused: bool | None = None,
    mae_weight: float = 1.0,
) -> tuple[TurboModel, torch.optim.AdamW]:
    """:func:`build_model` and an AdamW over all its parameters (torch's defaults unless given)."""
    model = build_model(workload, device, mae_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    return model, optimizer


def mixed_precision(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device_type`` (None: off, the model's own dtype)."""
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@dataclass
class StepLosses:
    """One step's losses (detached tensors: reading them is the caller's synchronisation) and, when the
    step clipped them, the gradients' norm before clipping."""

    loss: torch.Tensor
    cls_loss: torch.Tensor
    mae_loss: torch.Tensor | None
    grad_norm: torch.Tensor | None = None


def train_step(
    model: TurboModel,
    optimizer: torch.optim.Optimizer,
    video: torch.Tensor,
    labels: torch.Tensor,
    *,
    autocast: torch.dtype | None = None,
    max_grad_norm: float | None = None,
) -> StepLosses:
    """Forward (under ``torch.autocast(autocast)`` when given: mixed precision, fp32 weights), loss
    ``cross_entropy + mae_weight * mae_loss``, backward, gradient clipping to ``max_grad_norm`` when
    given, optimizer step. Gradients are set to None after the step, as DeepSpeed's engine frees them:
    between steps only weights and optimizer state are live."""
    with mixed_precision(video.device.type, autocast):
        out = model(video)
        cls_loss = F.cross_entropy(out.logits.float(), labels)
        loss = model.weighted_loss(cls_loss, out)
    loss.backward()
    grad_norm = None
    if max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mae = out.mae_loss.detach() if out.mae_loss is not None else None
    return StepLosses(loss.detach(), cls_loss.detach(), mae, grad_norm)
