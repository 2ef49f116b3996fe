"""Weight import: timm image ViTs (per frame and inflated), open_clip towers, VideoMAE, errors, reports.

State dicts come from randomly initialised timm / open_clip models built here (no download).
"""

import pytest
import torch

from turbo_ds.models import VideoViT, ViTConfig, create_model, inflate_patch_weight, load_pretrained

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=0)
    with torch.no_grad():  # random, non-trivial norms / biases so that a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def timm_like(frames=1, tubelet=1, img=32, **kw):
    cfg = ViTConfig(
        img_size=img, num_frames=frames, patch_size=16, tubelet_size=tubelet, embed_dim=192, depth=2,
        num_heads=3, pos_embed="learned", pool="cls", **kw,
    )  # fmt: skip
    return VideoViT(cfg).eval()


def timm_features(model, image):
    with torch.no_grad():
        x = model.forward_features(image)
    return x[:, 1:], x[:, 0]


def test_timm_vit_loaded_into_one_frame_videovit_gives_the_same_features(timm_vit):
    model = timm_like()
    report = load_pretrained(model, timm_vit.state_dict())
    assert report.fmt == "timm"
    assert report.missing == [] and report.unexpected == []
    image = torch.randn(2, 3, 32, 32)
    tokens, cls = timm_features(timm_vit, image)
    with torch.no_grad():
        out = model.forward_features(image[:, :, None])
    torch.testing.assert_close(out.tokens, tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pooled, cls, rtol=0, atol=1e-5)


def test_average_inflation_matches_the_image_model_on_a_static_clip(timm_vit):
    model = timm_like(frames=2, tubelet=2)
    report = load_pretrained(model, timm_vit.state_dict(), inflation="average")
    assert any(k.startswith("patch_embed.proj.weight") for k in report.interpolated)
    image = torch.randn(1, 3, 32, 32)
    tokens, cls = timm_features(timm_vit, image)
    with torch.no_grad():
        out = model.forward_features(image[:, :, None].expand(-1, -1, 2, -1, -1))  # one static tubelet
    torch.testing.assert_close(out.tokens, tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pooled, cls, rtol=0, atol=1e-5)


def test_center_inflation_sees_only_the_middle_frame_of_each_tubelet(timm_vit):
    model = timm_like(frames=3, tubelet=3)
    load_pretrained(model, timm_vit.state_dict(), inflation="center")
    image = torch.randn(1, 3, 32, 32)
    clip = torch.randn(1, 3, 3, 32, 32)
    clip[:, :, 1] = image[:, :]
    with torch.no_grad():
        out = model.forward_features(clip)
    torch.testing.assert_close(out.tokens, timm_features(timm_vit, image)[0], rtol=0, atol=1e-5)


def test_inflate_patch_weight():
    w = torch.randn(4, 3, 2, 2)
    avg = inflate_patch_weight(w, 4, "average")
    assert avg.shape == (4, 3, 4, 2, 2) and torch.allclose(avg.sum(2), w)
    center = inflate_patch_weight(w, 3, "center")
    assert torch.equal(center[:, :, 1], w) and not center[:, :, [0, 2]].any()
    with pytest.raises(ValueError, match="inflation"):
        inflate_patch_weight(w, 2, "random")


def test_position_tables_are_interpolated_to_a_larger_video(timm_vit):
    model = timm_like(frames=8, tubelet=2, img=64)
    report = load_pretrained(model, timm_vit.state_dict())
    assert any(k.startswith("pos_embed_spatial (2x2 -> 4x4)") for k in report.interpolated)
    assert "pos_embed_temporal: zeros (image checkpoint)" in report.notes
    assert torch.equal(model.pos_embed_temporal, torch.zeros_like(model.pos_embed_temporal))
    assert model.train()(torch.randn(1, 3, 8, 64, 64)).shape == (1, 192)


def test_open_clip_vision_tower_gives_the_same_features(tmp_path):
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32)
    text = open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    clip = open_clip.CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    with torch.no_grad():
        for name, p in clip.visual.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.pt")
    cfg = ViTConfig(
        img_size=32, num_frames=1, patch_size=8, tubelet_size=1, embed_dim=64, depth=2, num_heads=2,
        pos_embed="learned", pool="cls", norm_eps=1e-5, act="quick_gelu", pre_norm=True, patch_bias=False,
        proj_dim=24,
    )  # fmt: skip
    model = VideoViT(cfg).eval()
    report = load_pretrained(model, tmp_path / "clip.pt")
    assert report.fmt == "open_clip"
    assert report.missing == [] and report.unexpected == []
    assert any("non-visual" in n for n in report.notes)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = clip.encode_image(image)
        got = model(image[:, :, None])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def to_videomae(sd):
    """Our state dict in VideoMAE pre-training layout: `encoder.` prefix, q/v biases, a decoder."""
    out = {"mask_token": torch.zeros(1, 1, 8), "decoder.norm.weight": torch.ones(8)}
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):
            q, _, val = v.chunk(3)
            out["encoder." + k.replace("qkv.bias", "q_bias")] = q
            out["encoder." + k.replace("qkv.bias", "v_bias")] = val
        else:
            out["encoder." + k] = v
    return out


def test_videomae_checkpoint_round_trip_and_decoder_keys_reported():
    source = create_model("vit_debug", pos_embed="sincos")
    with torch.no_grad():
        for block in source.blocks:
            block.attn.qkv.bias[32:64] = 0  # VideoMAE has no k bias
    model = create_model("vit_debug", pos_embed="sincos")
    report = load_pretrained(model, to_videomae(source.state_dict()))
    assert report.fmt == "videomae"
    assert report.missing == []
    assert report.unexpected == ["decoder.norm.weight", "mask_token"]
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_videomae_joint_position_table_is_factored_exactly_when_separable():
    source = create_model("vit_debug", pos_embed="learned", pool="mean").eval()
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("pos_embed")}
    sd["pos_embed"] = source.pos_embed(source.cfg.grid).detach()  # joint (1, T*H*W, D)
    model = create_model("vit_debug", pos_embed="learned", pool="mean").eval()
    report = load_pretrained(model, sd, fmt="videomae")
    assert any("factored" in n for n in report.notes)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=1e-5)


def test_own_checkpoint_at_other_frame_count_is_interpolated():
    source = create_model("vit_debug", pos_embed="learned")
    model = create_model("vit_debug", pos_embed="learned", num_frames=8)
    report = load_pretrained(model, source.state_dict())
    assert report.fmt == "turbo_ds"
    assert report.interpolated == ["pos_embed_temporal (2 -> 4)"]
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_shape_mismatch_names_the_key_and_both_shapes(timm_vit):
    model = create_model("vit_debug", pos_embed="learned", img_size=32, num_frames=1, tubelet_size=1)
    with pytest.raises(ValueError, match=r"blocks\.0\.norm1\.weight: checkpoint \(192,\) vs model \(32,\)"):
        load_pretrained(model, timm_vit.state_dict())


def test_missing_and_unexpected_keys_are_reported_and_exclude_skips(timm_vit):
    sd = dict(timm_vit.state_dict())
    del sd["norm.weight"]
    sd["head.weight"] = torch.zeros(5, 192)
    model = timm_like()
    report = load_pretrained(model, sd)
    assert report.missing == ["norm.weight"]
    assert report.unexpected == ["head.weight"]
    assert "missing (1): norm.weight" in str(report)
    report = load_pretrained(model, sd, exclude=("head.",))
    assert report.unexpected == []


def test_bad_arguments_raise(timm_vit):
    with pytest.raises(ValueError, match="fmt"):
        load_pretrained(timm_like(), timm_vit.state_dict(), fmt="caffe")
    with pytest.raises(ValueError, match="cannot detect"):
        load_pretrained(timm_like(), {"foo": torch.zeros(1)})
    with pytest.raises(TypeError, match="VideoViT"):
        load_pretrained(torch.nn.Linear(2, 2), timm_vit.state_dict())


def test_pickled_training_checkpoint_needs_weights_only_false(tmp_path, timm_vit):
    import argparse

    torch.save({"model": timm_vit.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="weights_only=False"):
        load_pretrained(timm_like(), tmp_path / "ckpt.pth")
    assert load_pretrained(timm_like(), tmp_path / "ckpt.pth", weights_only=False).missing == []
