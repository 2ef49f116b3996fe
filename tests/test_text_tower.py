"""Text tower: open_clip text transformer import (both checkpoint layouts), context truncation, train modes,
the BPE tokenizer, and one open_clip file feeding both towers. Random open_clip models only (no download).
"""

import pickle
import subprocess
import sys
import time

import pytest
import torch

from turbo_ds.models import (
    TextTokenizer,
    TextTower,
    VideoViT,
    ViTConfig,
    build_text_tower,
    load_pretrained,
    register_model_configs,
)

open_clip = pytest.importorskip("open_clip")

TINY = "turbo-tiny"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturbed(model):
    """Random non-trivial LN weights / biases, so that a wrong key mapping shows in the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def clip():
    register_model_configs()
    torch.manual_seed(1)
    return perturbed(open_clip.create_model(TINY, pretrained=None))


def random_tokens(n, context, eot_at, vocab=49408):
    """SOT, random BPE ids, EOT (the largest id: open_clip pools at argmax) at `eot_at`, zero padding."""
    tokens = torch.zeros(n, context, dtype=torch.long)
    for i, pos in enumerate(eot_at):
        tokens[i, 0] = vocab - 2
        tokens[i, 1:pos] = torch.randint(1, vocab - 2, (pos - 1,))
        tokens[i, pos] = vocab - 1
    return tokens


def encode(model, tokens, like=None):
    """`model.encode_text(tokens)`, with `model`'s requires_grad set like the tower `like` (default: frozen).

    Under no_grad, nn.MultiheadAttention takes its fused fast path only when no weight requires grad;
    the two paths differ by ~1e-6 (2-4e-6 seen), so the reference must take the tower's path.
    """
    model.requires_grad_(like is not None and any(p.requires_grad for p in like.parameters()))
    with torch.no_grad():
        return model.encode_text(tokens)


def test_turbo_tiny_config_is_registered_and_matches_the_bpe_vocabulary():
    register_model_configs()
    assert TINY in open_clip.list_models()
    text_cfg = open_clip.get_model_config(TINY)["text_cfg"]
    assert text_cfg["vocab_size"] == TextTokenizer(16).vocab_size == 49408
    tower = build_text_tower(TINY)
    assert isinstance(tower, TextTower)
    assert (tower.embed_dim, tower.context_length, tower.vocab_size, tower.num_layers) == (32, 32, 49408, 2)
    assert not any(n.startswith("visual") for n, _ in tower.named_parameters())


def test_tower_from_a_state_dict_equals_encode_text(clip):
    tower = build_text_tower(TINY, checkpoint=clip.state_dict())
    tokens = random_tokens(3, 32, [5, 31, 12])
    with torch.no_grad():
        got = tower(tokens)
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, encode(clip, tokens), rtol=0, atol=1e-6)
    full = build_text_tower(TINY, checkpoint=clip.state_dict(), mode="full").eval()
    with torch.no_grad():
        torch.testing.assert_close(full(tokens), encode(clip, tokens, like=full), rtol=0, atol=1e-6)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "state_dict+module"])
def test_checkpoint_file_round_trip(tmp_path, clip, wrapped):
    sd = clip.state_dict()
    if wrapped:  # as open_clip training writes them under DDP
        sd = {"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}
    torch.save(sd, tmp_path / "clip.pt")
    tower = build_text_tower(TINY, checkpoint=tmp_path / "clip.pt")
    tokens = random_tokens(2, 32, [7, 20])
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens), encode(clip, tokens), rtol=0, atol=1e-6)


def test_custom_text_clip_layout_loads_too(tmp_path):
    register_model_configs()
    custom = perturbed(open_clip.create_model(TINY, pretrained=None, force_custom_text=True))
    assert any(k.startswith("text.") for k in custom.state_dict())
    torch.save(custom.state_dict(), tmp_path / "custom.pt")
    tower = build_text_tower(TINY, checkpoint=tmp_path / "custom.pt")
    tokens = random_tokens(2, 32, [3, 9])
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens), encode(custom, tokens), rtol=0, atol=1e-6)


def test_bad_checkpoint_keys_and_shapes_are_named(clip):
    sd = dict(clip.state_dict())
    del sd["ln_final.bias"]
    sd["transformer.resblocks.7.ln_1.weight"] = torch.ones(64)
    with pytest.raises(ValueError, match=r"missing text keys \[ln_final\.bias\].*resblocks\.7\.ln_1\.weight"):
        build_text_tower(TINY, checkpoint=sd)
    sd = dict(clip.state_dict())
    sd["text_projection"] = torch.zeros(64, 16)
    with pytest.raises(ValueError, match=r"text_projection: checkpoint \(64, 16\) vs tower \(64, 32\)"):
        build_text_tower(TINY, checkpoint=sd)
    visual_only = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    with pytest.raises(ValueError, match="token_embedding.weight"):
        build_text_tower(TINY, checkpoint=visual_only)


def test_shorter_context_truncates_positions_and_mask(clip):
    tower = build_text_tower(TINY, checkpoint=clip.state_dict(), context_length=16)
    assert tower.context_length == 16
    assert tower.text.positional_embedding.shape == (16, 64)
    assert tower.text.attn_mask.shape == (16, 16)
    tokens = random_tokens(2, 32, [4, 15])  # EOT within the first 16: causal => same features
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens[:, :16]), encode(clip, tokens), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"tokens must be \(N, 16\)"):
        tower(tokens)
    with pytest.raises(ValueError, match="context_length must be in"):
        build_text_tower(TINY, context_length=33)


def trainable(tower):
    return {n for n, p in tower.named_parameters() if p.requires_grad}


def test_train_modes_select_parameters():
    frozen = build_text_tower(TINY)
    assert frozen.mode == "frozen" and trainable(frozen) == set()
    frozen.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    torch.nn.Sequential(frozen).train()  # a parent's train() does not switch it on either
    assert not frozen.training

    last = build_text_tower(TINY, mode="last_n", last_n=1)
    assert trainable(last) == {
        n
        for n, _ in last.named_parameters()
        if n.startswith(("text.transformer.resblocks.1.", "text.ln_final."))
    } | {"text.text_projection"}
    assert last.train().training
    assert "text.token_embedding.weight" not in trainable(build_text_tower(TINY, mode="last_n", last_n=2))

    full = build_text_tower(TINY, mode="full")
    assert trainable(full) == {n for n, _ in full.named_parameters()}
    full.set_trainable("frozen")
    assert trainable(full) == set() and not full.training

    with pytest.raises(ValueError, match="mode must be one of"):
        build_text_tower(TINY, mode="lora")
    for bad in (0, 3):
        with pytest.raises(ValueError, match=r"last_n must be in \[1, 2\]"):
            build_text_tower(TINY, mode="last_n", last_n=bad)


def test_last_n_gradients_reach_only_the_trainable_parameters():
    tower = build_text_tower(TINY, mode="last_n", last_n=1).train()
    tower(random_tokens(2, 32, [6, 10])).square().sum().backward()
    with_grad = {n for n, p in tower.named_parameters() if p.grad is not None}
    assert with_grad == trainable(tower)


def test_unsupported_model_configs_raise():
    with pytest.raises(ValueError, match="unknown open_clip model config"):
        build_text_tower("ViT-Q-99")
    with pytest.raises(ValueError, match="no Hugging Face text models, no CoCa"):
        build_text_tower("coca_ViT-B-32")
    with pytest.raises(ValueError, match="schemas"):
        build_text_tower("hf-hub:org/model")


def test_tokenizer_matches_open_clip_and_pickles():
    texts = ["a dog plays the guitar", "", "Two people CLIMB a wall!"]
    tok = TextTokenizer()
    out = tok(texts)
    assert out.dtype == torch.long and out.shape == (3, 77)
    assert torch.equal(out, open_clip.tokenize(texts))
    assert torch.equal(tok("a dog plays the guitar"), out[:1])

    clone = pickle.loads(pickle.dumps(tok))
    assert clone._tokenizer is None  # created again, lazily, in the receiving process
    assert b"bpe" not in pickle.dumps(tok).lower() and len(pickle.dumps(tok)) < 200
    assert torch.equal(clone(texts), out)

    short = TextTokenizer(8)(["one two three four five six seven eight nine ten", "hi"])
    sot, eot = out[0, 0].item(), out[0].max().item()
    assert short.shape == (2, 8)
    assert short[0, 0] == sot and short[0, -1] == eot  # truncated, EOT kept last
    assert short[1].tolist() == [sot, *open_clip.tokenize(["hi"])[0, 1:3].tolist(), 0, 0, 0, 0, 0]
    assert torch.equal(
        short, open_clip.tokenize(["one two three four five six seven eight nine ten", "hi"], 8)
    )
    with pytest.raises(ValueError, match="context_length"):
        TextTokenizer(1)


def test_tokenizer_output_feeds_the_tower(clip):
    tower = build_text_tower(TINY, checkpoint=clip.state_dict())
    tokens = TextTokenizer(tower.context_length)(["a cat", "a video of a person juggling"])
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens), encode(clip, tokens), rtol=0, atol=1e-6)


def test_one_open_clip_file_feeds_both_towers(tmp_path, clip):
    torch.save({"state_dict": {"module." + k: v for k, v in clip.state_dict().items()}}, tmp_path / "c.pt")
    text = build_text_tower(TINY, checkpoint=tmp_path / "c.pt")
    cfg = ViTConfig(  # the video tower matching turbo-tiny's vision_cfg (open_clip defaults: GELU, eps 1e-5)
        img_size=32, num_frames=1, patch_size=8, tubelet_size=1, embed_dim=64, depth=2, num_heads=2,
        pos_embed="learned", pool="cls", norm_eps=1e-5, act="gelu", pre_norm=True, patch_bias=False,
        proj_dim=32,
    )  # fmt: skip
    video = VideoViT(cfg).eval()
    report = load_pretrained(video, tmp_path / "c.pt", fmt="open_clip")
    assert report.missing == [] and report.unexpected == []
    image = torch.randn(2, 3, 32, 32)
    tokens = random_tokens(2, 32, [5, 9])
    with torch.no_grad():
        torch.testing.assert_close(video(image[:, :, None]), clip.encode_image(image), rtol=0, atol=1e-5)
        torch.testing.assert_close(text(tokens), encode(clip, tokens), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_vit_b16_text_tower_equals_encode_text():
    start = time.perf_counter()
    clip = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tower = build_text_tower("ViT-B/16", checkpoint=clip.state_dict())
    assert (tower.embed_dim, tower.context_length, tower.num_layers) == (512, 77, 12)
    tokens = random_tokens(2, 77, [10, 76])
    with torch.no_grad():
        torch.testing.assert_close(tower(tokens), encode(clip, tokens), rtol=0, atol=1e-6)
    assert time.perf_counter() - start < 30


def test_importing_turbo_ds_models_does_not_import_open_clip():
    code = "import sys, turbo_ds.models; assert 'open_clip' not in sys.modules, 'open_clip imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
