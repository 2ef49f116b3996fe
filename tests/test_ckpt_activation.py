"""Activation checkpointing: every implementation gives the plain outputs and gradients, and recomputes."""

import copy

import pytest
import torch

from turbo_ds.engine.checkpointing import apply_activation_checkpointing
from turbo_ds.models import PartialMAE, TurboModel, create_model


def make_model():
    torch.manual_seed(0)
    encoder = create_model(
        "vit_debug", num_classes=3, drop_ratio=0.5, drop_path_rate=0.2, pos_embed="learned"
    )
    return TurboModel(
        encoder, PartialMAE.for_encoder(encoder, decoder_dim=16, decoder_heads=2, pmae_ratio=0.5)
    )


def step(model, video):
    torch.manual_seed(7)  # same token dropout, drop-path and recon choice in every run
    model.zero_grad()
    out = model(video)
    (out.logits.square().mean() + out.mae_loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.logits.detach(), out.mae_loss.detach(), grads


@pytest.mark.parametrize(
    "impl,num_blocks,offload",
    [
        ("torch", None, False),
        ("torch", 1, False),
        ("deepspeed", None, False),
        ("fairscale", None, False),
        ("fairscale", 2, True),
    ],
)
def test_same_outputs_and_gradients_as_plain(impl, num_blocks, offload):
    plain = make_model().train()
    ckpt = copy.deepcopy(plain)
    n = apply_activation_checkpointing(ckpt, impl, num_blocks, offload_to_cpu=offload)
    assert n == (2 if num_blocks is None else num_blocks)
    video = torch.randn(2, 3, 4, 32, 32)
    ref_logits, ref_mae, ref_grads = step(plain, video)

    calls = []
    ckpt.encoder.blocks[0].norm1.register_forward_pre_hook(lambda *a: calls.append(1))
    logits, mae, grads = step(ckpt, video)
    assert len(calls) == 2  # forward + recompute in backward: checkpointing is really on
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(mae, ref_mae, rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay loadable


def test_no_recompute_without_gradients_and_can_be_turned_off():
    model = make_model().train()
    apply_activation_checkpointing(model, "torch", None)
    calls = []
    model.encoder.blocks[0].norm1.register_forward_pre_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 32, 32))
    assert model.encoder.checkpoint_blocks == 2 and len(calls) == 1
    apply_activation_checkpointing(model, None)
    assert model.encoder.checkpoint_fn is None and model.encoder.checkpoint_blocks == 0


def test_bad_arguments_raise():
    model = make_model()
    with pytest.raises(ValueError, match="impl"):
        apply_activation_checkpointing(model, "jax", None)
    with pytest.raises(ValueError, match="num_blocks"):
        apply_activation_checkpointing(model, "torch", 3)
    with pytest.raises(ValueError, match="no VideoViT"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), "torch", 1)
