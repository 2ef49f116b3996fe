"""Classification task: named losses sum to loss, label smoothing, mae_weight, multi-view averaging."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from turbo_ds.config import config_from_dict
from turbo_ds.tasks import build_task, topk_accuracy


def _cfg(**sections):
    base = {
        "data": {"num_frames": 4, "img_size": 32},
        "pmae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "task": {"num_classes": 5},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return config_from_dict(base)


def _batch(b=4, views=None):
    g = torch.Generator().manual_seed(0)
    shape = (b, 3, 4, 32, 32) if views is None else (b, views, 3, 4, 32, 32)
    return {"video": torch.randn(*shape, generator=g), "label": torch.tensor([0, 1, 2, 3][:b])}


def test_losses_sum_and_mae_weight():
    torch.manual_seed(0)
    task = build_task(
        _cfg(
            token_dropout={"drop_ratio": 0.75},
            pmae={"enabled": True, "pmae_ratio": 0.5},
            task={"mae_weight": 0.3},
        )
    )
    torch.manual_seed(1)
    out = task(_batch())
    assert set(out.losses) == {"cls_loss", "mae_loss"}
    assert torch.allclose(out.loss, out.losses["cls_loss"] + out.losses["mae_loss"])
    assert out.losses["mae_loss"].item() == pytest.approx(
        0.3 * out.metrics["mae_loss_unweighted"].item(), rel=1e-5
    )
    assert out.batch_size == 4 and {"top1", "top5"} <= set(out.metrics)
    n_tokens = (4 // 2) * (32 // 8) ** 2
    assert out.extras["tokens_per_clip"] == n_tokens // 4  # 75% dropped
    out.loss.backward()
    assert all(p.grad is not None for n, p in task.named_parameters() if p.requires_grad), (
        "every parameter gets a gradient"
    )


def test_no_pmae_and_eval_sees_all_tokens():
    task = build_task(_cfg(token_dropout={"drop_ratio": 0.5})).eval()
    with torch.no_grad():
        out = task(_batch())
    assert set(out.losses) == {"cls_loss"}
    assert out.extras["tokens_per_clip"] == (4 // 2) * (32 // 8) ** 2


def test_label_smoothing_applies_in_training_only():
    task = build_task(_cfg(task={"label_smoothing": 0.2}))
    batch = _batch()
    torch.manual_seed(0)
    out = task(batch)
    logits = out.extras["logits"]
    assert out.losses["cls_loss"].item() == pytest.approx(
        F.cross_entropy(logits, batch["label"], label_smoothing=0.2).item(), rel=1e-5
    )
    task.eval()
    with torch.no_grad():
        out = task(batch)
    assert out.losses["cls_loss"].item() == pytest.approx(
        F.cross_entropy(out.extras["logits"], batch["label"]).item(), rel=1e-5
    )


def test_multiview_averages_softmax_over_views():
    task = build_task(_cfg()).eval()
    batch = _batch(b=2, views=3)
    with torch.no_grad():
        out = task(batch)
        per_view = task.model(batch["video"].flatten(0, 1)).logits.view(2, 3, -1)
    expected = per_view.softmax(-1).mean(1)
    assert torch.allclose(out.extras["logits"].exp(), expected, atol=1e-6)
    assert out.batch_size == 2


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(logits, torch.tensor([1, 2, 1]), ks=(1, 2, 5))
    assert acc["top1"].item() == pytest.approx(100 / 3)
    assert acc["top2"].item() == pytest.approx(200 / 3)
    assert acc["top5"].item() == pytest.approx(100.0)


@pytest.mark.parametrize(
    "task",
    [
        {"name": "classification", "num_classes": 5},
        {"name": "video_text", "text_model": "turbo-tiny", "context_length": 8},
        {"name": "long_video", "num_classes": 4},
        {"name": "long_video_two_stage", "num_classes": 4, "clip_frames": 2},
    ],
)
def test_video_encoder_prefix_is_where_the_tasks_encoder_sits(task):
    """What export and scripts/eval.py --weights ask of a task: its VideoViT's place in the state dict."""
    from turbo_ds.models import VideoViT

    cfg = {"model": {"name": "vit_debug", "overrides": {"pos_embed": "learned"}}, "task": task}
    cfg["token_dropout"] = {"drop_ratio": 0.5}  # long_video evaluates draws at the training ratio
    built = build_task(config_from_dict({**cfg, "data": {"num_frames": 4, "img_size": 32}}))
    prefix = type(built).video_encoder_prefix
    assert isinstance(built.get_submodule(prefix.rstrip(".")), VideoViT)
    keys = [k for k in built.state_dict() if k.startswith(prefix)]
    assert f"{prefix}blocks.0.attn.qkv.weight" in keys
