"""Partial-MAE: reconstructed count, subset of the dropped tokens, target, loss locality, decoder cost."""

import pytest
import torch

from turbo_ds.models import (
    PartialMAE,
    TurboModel,
    create_model,
    normalize_patches,
    patchify,
    select_recon_indices,
)
from turbo_ds.models.partial_mae import num_reconstructed

# vit_debug: 4 frames of 32x32, tubelet 2, patch 8 -> grid (2, 4, 4), 32 tokens of 2*8*8*3 = 384 pixels.
X = (2, 3, 4, 32, 32)


def make(drop_ratio=0.75, pmae_ratio=0.25, **kw):
    torch.manual_seed(0)
    encoder = create_model("vit_debug", drop_ratio=drop_ratio, **kw)
    return TurboModel(
        encoder, PartialMAE.for_encoder(encoder, decoder_dim=16, decoder_heads=2, pmae_ratio=pmae_ratio)
    )


@pytest.mark.parametrize("pmae_ratio,expected", [(0.25, 6), (0.5, 12), (1.0, 24), (0.01, 1)])
def test_reconstructs_exactly_the_requested_subset_of_dropped_tokens(pmae_ratio, expected):
    model = make(pmae_ratio=pmae_ratio).train()
    out = model(torch.randn(*X))
    assert out.drop_idx.shape == (2, 24)
    assert out.recon_idx.shape == (2, expected) == (2, num_reconstructed(24, pmae_ratio))
    for recon, drop in zip(out.recon_idx, out.drop_idx, strict=True):
        assert torch.equal(recon, recon.sort().values)
        assert len(set(recon.tolist())) == expected
        assert set(recon.tolist()) <= set(drop.tolist())
    if pmae_ratio == 1.0:
        assert torch.equal(out.recon_idx, out.drop_idx)


def test_recon_subset_is_random_per_sample():
    drop = torch.arange(40).repeat(8, 1)
    recon = select_recon_indices(drop, 0.25, generator=torch.Generator().manual_seed(0))
    assert recon.shape == (8, 10)
    assert len({tuple(r.tolist()) for r in recon}) > 1


def test_off_in_eval_at_ratio_zero_and_without_dropout():
    x = torch.randn(*X)
    out = make(pmae_ratio=0.0).train()(x)
    assert out.mae_loss is None and out.recon_idx is None and out.drop_idx is not None
    out = make().eval()(x)
    assert out.mae_loss is None and out.recon_idx is None and out.keep_idx is None
    out = make(drop_ratio=0.0).train()(x)
    assert out.mae_loss is None


def test_bad_pmae_ratio_raises():
    with pytest.raises(ValueError, match="pmae_ratio"):
        PartialMAE(32, 8, 2, pmae_ratio=1.5)
    with pytest.raises(ValueError, match="pmae_ratio"):
        make().pmae.set_pmae_ratio(-0.1)


def test_patchify_orders_tokens_like_the_encoder():
    video = torch.randn(*X)
    patches = patchify(video, patch_size=8, tubelet_size=2)
    assert patches.shape == (2, 32, 384)
    t, h, w = 1, 2, 3  # token index in the (2, 4, 4) grid, time-major
    cube = video[1, :, 2 * t : 2 * t + 2, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8]  # c, t, p, p
    assert torch.equal(patches[1, t * 16 + h * 4 + w], cube.permute(1, 2, 3, 0).reshape(-1))


def test_normalized_target_has_zero_mean_unit_variance_per_patch():
    target = normalize_patches(torch.randn(2, 5, 384) * 3 + 7)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(2, 5), atol=1e-3)


def test_loss_is_the_mse_on_the_normalized_pixels_of_the_reconstructed_tokens():
    model = make().train()
    video = torch.randn(*X)
    enc = model.encoder.forward_features(video)
    out = model.pmae(video, enc)
    expected_target = normalize_patches(
        torch.stack([patchify(video, 8, 2)[b, out.recon_idx[b]] for b in range(2)])
    )
    assert torch.allclose(out.target, expected_target)
    assert out.pred.shape == out.target.shape == (2, 6, 384)
    assert torch.allclose(out.loss, ((out.pred - out.target) ** 2).mean())


def _token_slice(idx: int):
    t, rest = divmod(idx, 16)
    h, w = divmod(rest, 4)
    return (slice(None), slice(2 * t, 2 * t + 2), slice(8 * h, 8 * h + 8), slice(8 * w, 8 * w + 8))


def test_loss_depends_only_on_kept_and_reconstructed_tokens():
    model = make().train()
    video = torch.randn(*X)

    def run(v):
        torch.manual_seed(123)  # same dropout and recon choice every run
        return model(v)

    base = run(video)
    recon = set(base.recon_idx[0].tolist())
    hidden = [i for i in base.drop_idx[0].tolist() if i not in recon][0]  # dropped, not reconstructed
    changed = video.clone()
    changed[0][_token_slice(hidden)] += 5.0
    assert torch.equal(run(changed).mae_loss, base.mae_loss)

    changed = video.clone()
    changed[0][_token_slice(sorted(recon)[0])] = torch.randn(3, 2, 8, 8) * 4
    assert not torch.allclose(run(changed).mae_loss, base.mae_loss)


def test_decoder_sees_only_kept_plus_reconstructed_tokens():
    model = make(pmae_ratio=0.5).train()
    seen = []
    model.pmae.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    out = model(torch.randn(*X))
    assert seen == [out.keep_idx.shape[1] + out.recon_idx.shape[1]] == [8 + 12]


def test_weighted_loss_mixes_with_mae_weight():
    model = make()
    model.pmae.mae_weight = 0.3
    out = model.train()(torch.randn(*X))
    task = torch.tensor(2.0)
    assert torch.allclose(model.weighted_loss(task, out), task + 0.3 * out.mae_loss)
    assert model.weighted_loss(task, model.eval()(torch.randn(*X))) is task


def test_gather_cubes_equals_rearranging_the_whole_video_then_gathering():
    from turbo_ds.models.layers import gather_cubes
    from turbo_ds.models.token_dropout import gather_tokens

    torch.manual_seed(0)
    video = torch.randn(3, 3, 8, 16, 24)  # grid (4, 2, 3)
    idx = torch.stack([torch.randperm(24)[:7].sort().values for _ in range(3)])
    expected = gather_tokens(patchify(video, patch_size=8, tubelet_size=2), idx)
    assert torch.equal(gather_cubes(video, idx, 2, 8, channels_last=True), expected)
    b, c = video.shape[:2]
    conv_order = video.reshape(b, c, 4, 2, 2, 8, 3, 8).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, 24, -1)
    assert torch.equal(gather_cubes(video, idx, 2, 8), gather_tokens(conv_order, idx))
