"""VideoViT: shapes, run-time resizing, eval vs train tokens, gradients, registry and input checks."""

import pytest
import torch

from turbo_ds.models import PartialMAE, TurboModel, ViTConfig, create_model, list_models, model_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("frames,height,width", [(4, 32, 32), (16, 32, 32), (2, 48, 64), (8, 16, 24)])
def test_shapes_any_frames_and_resolution(pos_embed, pool, frames, height, width):
    model = create_model("vit_debug", pos_embed=pos_embed, pool=pool, num_classes=7).eval()
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 3, frames, height, width))
        logits = model(torch.randn(2, 3, frames, height, width))
    grid = (frames // 2, height // 8, width // 8)
    assert out.grid == grid
    assert out.tokens.shape == (2, grid[0] * grid[1] * grid[2], 32)
    assert out.pooled.shape == (2, 32)
    assert logits.shape == (2, 7)
    assert out.keep_idx is None and out.drop_idx is None


def test_no_head_returns_pooled_features_and_projection():
    model = create_model("vit_debug", proj_dim=12).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x).pooled)
    assert model(x).shape == (2, 12)


def test_learned_pos_embed_is_identity_at_native_grid_and_resized_elsewhere():
    model = create_model("vit_debug", pos_embed="learned")
    t, h, w = model.cfg.grid
    native = model.pos_embed((t, h, w)).reshape(t, h * w, -1)
    expected = model.pos_embed_temporal[0][:, None] + model.pos_embed_spatial[0][None]
    assert torch.allclose(native, expected)
    assert model.pos_embed((4 * t, 2 * h, 3 * w)).shape == (1, 4 * t * 2 * h * 3 * w, 32)


def test_sincos_tables_extend_consistently_in_time():
    model = create_model("vit_debug", pos_embed="sincos")
    short = model.pos_embed((2, 4, 4))
    long = model.pos_embed((8, 4, 4))
    assert torch.allclose(long[:, : short.shape[1]], short)  # frame t has the same code in both
    assert "pos_embed_spatial" not in model.state_dict()  # fixed table, not a weight


@pytest.mark.parametrize("strategy", ["random", "tube", "frame_uniform"])
def test_training_drops_tokens_and_eval_sees_all(strategy):
    model = create_model("vit_debug", drop_ratio=0.75, drop_strategy=strategy)
    x = torch.randn(3, 3, 4, 32, 32)  # 2 x 4 x 4 = 32 tokens
    out = model.train().forward_features(x)
    assert out.tokens.shape == (3, 8, 32)
    assert out.keep_idx.shape == (3, 8) and out.drop_idx.shape == (3, 24)
    out = model.eval().forward_features(x)
    assert out.tokens.shape == (3, 32, 32)
    assert out.keep_idx is None


def test_eval_output_does_not_depend_on_drop_ratio():
    model = create_model("vit_debug", drop_ratio=0.9).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.set_drop_ratio(0.0)
        assert torch.equal(model(x), before)


def test_kept_tokens_are_the_embedded_tokens_at_keep_idx():
    # depth 0: output tokens are the normed embedded tokens, so training tokens must equal the
    # eval tokens gathered at keep_idx.
    model = create_model("vit_debug", depth=0, pool="mean", drop_ratio=0.5)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        train = model.train().forward_features(x)
        full = model.eval().forward_features(x).tokens
    gathered = torch.stack([full[b, train.keep_idx[b]] for b in range(2)])
    assert torch.allclose(train.tokens, gathered, atol=1e-6)


def test_set_drop_ratio_changes_kept_count_and_validates():
    model = create_model("vit_debug").train()
    x = torch.randn(1, 3, 4, 32, 32)
    assert model.forward_features(x).tokens.shape[1] == 32
    model.set_drop_ratio(0.5)
    assert model.forward_features(x).tokens.shape[1] == 16
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="drop_ratio"):
            model.set_drop_ratio(bad)


def test_every_parameter_gets_a_gradient():
    encoder = create_model(
        "vit_debug", pos_embed="learned", num_classes=5, drop_ratio=0.5, drop_path_rate=0.1
    )
    model = TurboModel(
        encoder, PartialMAE.for_encoder(encoder, decoder_dim=16, decoder_heads=2, pmae_ratio=0.5)
    )
    out = model(torch.randn(2, 3, 4, 32, 32))
    (out.logits.square().mean() + out.mae_loss).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_drop_path_is_active_in_training_only():
    model = create_model("vit_debug", drop_path_rate=0.5)
    x = torch.randn(4, 3, 4, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "shape,match",
    [
        ((2, 3, 32, 32), "expected video of shape"),
        ((2, 1, 4, 32, 32), "expected video of shape"),
        ((2, 3, 3, 32, 32), "tubelet_size"),
        ((2, 3, 4, 30, 32), "patch_size"),
    ],
)
def test_bad_input_shapes_raise_clear_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        create_model("vit_debug")(torch.randn(*shape))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(drop_ratio=1.0), "drop_ratio"),
        (dict(pool="max"), "pool"),
        (dict(pos_embed="rope"), "pos_embed"),
        (dict(drop_strategy="blocks"), "drop_strategy"),
        (dict(embed_dim=30, num_heads=4), "divisible"),
        (dict(img_size=30), "patch_size"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        model_config("vit_debug", **overrides)


def test_registry_presets():
    assert {"vit_debug", "vit_small_patch16", "vit_base_patch16", "vit_large_patch16"} <= set(list_models())
    for name, (dim, depth, heads) in {
        "vit_small_patch16": (384, 12, 6),
        "vit_base_patch16": (768, 12, 12),
        "vit_large_patch16": (1024, 24, 16),
    }.items():
        cfg = model_config(name)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (dim, depth, heads, 16)
    assert model_config("vit_small_patch16", num_frames=32).grid == (16, 14, 14)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vit_huge_patch99")
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        create_model("vit_debug", depht=3)
    assert isinstance(model_config("vit_debug"), ViTConfig)


def test_bf16_model_accepts_fp32_clips():
    model = create_model("vit_debug", drop_ratio=0.5, num_classes=3).to(torch.bfloat16)
    x = torch.randn(2, 3, 4, 32, 32)
    assert model.train()(x).dtype == torch.bfloat16
    assert model.eval()(x).shape == (2, 3)
