"""Long-video tasks: absolute temporal positions for chunks (chunked == full when one chunk covers the
clip), seeded eval-time token dropout, uniform temporal offsets, option errors, the two-stage baseline's
frozen encoder under DeepSpeed, and both tasks trained and evaluated end to end on the tiny demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port, launch, set_rank_env, tiny_config, write_config

from turbo_ds.config import ConfigError, config_from_dict
from turbo_ds.data.sampling import FrameSampler, uniform_offset_indices, uniform_segment_indices
from turbo_ds.models import create_model
from turbo_ds.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]


def _cfg_dict(name: str = "long_video", pos_embed: str = "learned", **task) -> dict:
    return {
        "model": {"name": "vit_debug", "overrides": {"pos_embed": pos_embed, "pool": "mean"}},
        "token_dropout": {"drop_ratio": 0.75},
        "pmae": {"enabled": True, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "data": {"num_frames": 8, "img_size": 32},
        "task": {"name": name, "num_classes": 4, **task},
        "optim": {"micro_batch_size": 2, "lr": 1e-2, "warmup_steps": 0},
        "train": {"max_steps": 3},
    }


def _cfg(name: str = "long_video", pos_embed: str = "learned", **task):
    return config_from_dict(_cfg_dict(name, pos_embed, **task))


# --------------------------------------------------------------------------- positions and chunks


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_chunk_positions_are_the_slice_of_the_whole_clip(pos_embed):
    torch.manual_seed(0)
    vit = create_model("vit_debug", num_frames=8, pos_embed=pos_embed)
    whole = vit.pos_embed((8, 4, 4))  # 8 token steps: 16 frames at tubelet 2
    part = vit.pos_embed((2, 4, 4), t_offset=4, t_total=8)
    assert torch.equal(part, whole[:, 4 * 16 : 6 * 16])
    assert torch.equal(vit.pos_embed((8, 4, 4), 0, 8), whole)  # the default is the whole clip
    with pytest.raises(ValueError, match="not inside"):
        vit.pos_embed((2, 4, 4), t_offset=7, t_total=8)
    with pytest.raises(ValueError, match="multiple of tubelet_size"):
        vit(torch.randn(1, 3, 4, 32, 32), t_offset=1)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_chunked_equals_full_when_one_chunk_covers_the_video(pos_embed):
    torch.manual_seed(0)
    task = build_task(_cfg(pos_embed=pos_embed, eval_num_frames=16, chunk_frames=8)).eval()
    torch.nn.init.normal_(task.model.encoder.head.weight)  # logits of order 1, not 0.01
    video = torch.randn(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = task.full_logits(video)
        one_chunk = task.chunked_logits(video, chunk_frames=16)
        two_chunks = task.chunked_logits(video, chunk_frames=8)
    torch.testing.assert_close(one_chunk, full, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(two_chunks, full, atol=1e-4)  # chunks do not attend to each other
    # each chunk is the whole clip's part: chunk 2 alone with its absolute positions, by hand
    enc = task.model.encoder
    with torch.no_grad():
        c0 = enc(video[:, :, :8], t_offset=0, t_total=16)
        c1 = enc(video[:, :, 8:], t_offset=8, t_total=16)
        c1_wrong = enc(video[:, :, 8:])  # positions of a clip's start
    torch.testing.assert_close(two_chunks, (c0 + c1) / 2)
    assert not torch.allclose(c1, c1_wrong, atol=1e-4)


def test_eval_time_token_dropout_is_seeded_and_sorted():
    torch.manual_seed(0)
    vit = create_model("vit_debug", num_frames=8, drop_ratio=0.5).eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert vit(video, return_features=True).keep_idx is None  # eval: all tokens by default
        a = vit(video, return_features=True, drop_ratio=0.75, generator=torch.Generator().manual_seed(3))
        b = vit(video, return_features=True, drop_ratio=0.75, generator=torch.Generator().manual_seed(3))
        c = vit(video, return_features=True, drop_ratio=0.75, generator=torch.Generator().manual_seed(4))
    assert a.keep_idx.shape == (2, 16) and a.drop_idx.shape == (2, 48)  # 64 tokens, keep 25%
    assert torch.equal(a.keep_idx, a.keep_idx.sort(dim=1).values)
    assert torch.equal(a.keep_idx, b.keep_idx) and torch.equal(a.logits, b.logits)
    assert not torch.equal(a.keep_idx, c.keep_idx)


def test_draws_average_is_deterministic_and_differs_from_full():
    torch.manual_seed(0)
    task = build_task(_cfg(eval_modes=["draws"], eval_draws=3, eval_draw_ratio=0.5)).eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        d1, d2, full = task.draws_logits(video), task.draws_logits(video), task.full_logits(video)
    assert torch.equal(d1, d2)
    torch.testing.assert_close(d1.exp().sum(-1), torch.ones(2))  # log of averaged probabilities
    assert not torch.allclose(d1, full.log_softmax(-1), atol=1e-4)


# --------------------------------------------------------------------------- uniform offsets


def test_uniform_offsets_shift_the_frame_inside_each_segment():
    mid = uniform_segment_indices(100, 10)
    assert mid.tolist() == list(range(5, 100, 10))
    assert uniform_offset_indices(100, 10, 1)[0].tolist() == mid.tolist()
    v = uniform_offset_indices(100, 10, 4)  # positions 1/8, 3/8, 5/8, 7/8 of each 10-frame segment
    assert [x[:2].tolist() for x in v] == [[1, 11], [3, 13], [6, 16], [8, 18]]
    assert all(np.all(np.diff(x) > 0) for x in v)
    views = FrameSampler("uniform", num_frames=10, num_clips=4)(100, None)
    assert [x.tolist() for x in views] == [x.tolist() for x in v]
    train = FrameSampler("uniform", num_frames=10, num_clips=2)(100, np.random.default_rng(0))
    assert len(train) == 2 and not np.array_equal(train[0], train[1])
    with pytest.raises(ValueError, match="position"):
        uniform_segment_indices(100, 10, position=1.0)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("long_video", {"eval_modes": ["full", "sliding"]}, "task.eval_modes"),
        ("long_video", {"eval_modes": []}, "task.eval_modes"),
        ("long_video", {"eval_modes": ["full", "full"]}, "task.eval_modes"),
        ("long_video", {"eval_num_frames": 15}, "task.eval_num_frames"),
        (
            "long_video",
            {"eval_modes": ["chunked"], "eval_num_frames": 16, "chunk_frames": 6},
            "task.chunk_frames",
        ),
        ("long_video", {"eval_draws": 0}, "task.eval_draws"),
        ("long_video", {"eval_draw_ratio": 1.0}, "task.eval_draw_ratio"),
        ("long_video", {"eval_offsets": 0}, "task.eval_offsets"),
        ("long_video", {"label_smoothing": 1.0}, "task.label_smoothing"),
        ("long_video", {"chunk_size": 8}, "task.chunk_size"),
        ("long_video_two_stage", {"clip_frames": 3}, "task.clip_frames"),
        ("long_video_two_stage", {"head_dim": 30, "head_heads": 4}, "task.head_heads"),
    ],
)
def test_bad_options_name_their_key(name, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_task(_cfg(name, **options))


def test_draws_need_a_ratio():
    cfg = {**_cfg_dict(eval_modes=["draws"]), "token_dropout": {"drop_ratio": 0.0}}
    with pytest.raises(ConfigError, match=r"task\.eval_draw_ratio"):
        build_task(config_from_dict(cfg))


# --------------------------------------------------------------------------- two-stage, DeepSpeed


def _two_stage_worker(rank: int, world: int, port: int, out_dir: str, weights: str) -> None:
    set_rank_env(rank, world, port)
    from turbo_ds.engine import Engine

    d = _cfg_dict("long_video_two_stage", clip_frames=4, head_dim=32, head_heads=2)
    d["model"]["pretrained"] = weights
    cfg = config_from_dict(d)
    torch.manual_seed(0)
    task = build_task(cfg)
    saved = torch.load(weights)
    loaded = all(torch.equal(v, saved[k]) for k, v in task.encoder.state_dict().items())
    enc_before = [p.detach().clone() for p in task.encoder.parameters()]
    head_before = [p.detach().clone() for p in task.head.parameters()]
    eng = Engine.create(task, cfg, ROOT / "ds_configs" / "zero2.json")
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        batch = {"video": torch.randn(2, 3, 8, 32, 32, generator=g), "label": torch.tensor([0, 3])}
        out = eng(eng.to_device(batch))
        eng.backward(out.loss)
        eng.step()
    module = eng.module
    state = eng.optimizer.optimizer.state
    result = {
        "loaded": loaded,
        "encoder_training": module.encoder.training,
        "encoder_requires_grad": any(p.requires_grad for p in module.encoder.parameters()),
        "encoder_grads": [p.grad is not None for p in module.encoder.parameters()],
        "encoder_same": all(
            torch.equal(a, b.float()) for a, b in zip(enc_before, module.encoder.parameters(), strict=True)
        ),
        "head_changed": any(
            not torch.equal(a, b.float()) for a, b in zip(head_before, module.head.parameters(), strict=True)
        ),
        "optimizer_numel": sum(s["exp_avg"].numel() for s in state.values() if "exp_avg" in s),
        "head_numel": sum(p.numel() for p in module.head.parameters()),
        "encoder_numel": sum(p.numel() for p in module.encoder.parameters()),
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    from turbo_ds.engine import distributed

    distributed.destroy()  # a gloo group left to interpreter exit can abort the process ("terminate called")


@pytest.mark.slow
def test_two_stage_encoder_is_frozen_under_deepspeed(tmp_path):
    torch.manual_seed(123)
    weights = tmp_path / "clip_encoder.pt"
    torch.save(
        create_model("vit_debug", num_frames=4, pos_embed="learned", pool="mean").state_dict(), weights
    )
    mp.start_processes(
        _two_stage_worker,
        args=(1, free_port(), str(tmp_path), str(weights)),
        nprocs=1,
        join=True,
        start_method="spawn",
    )
    r = json.loads((tmp_path / "rank0.json").read_text())
    assert r["loaded"], "model.pretrained was not loaded into the frozen encoder"
    assert not r["encoder_training"] and not r["encoder_requires_grad"]
    assert not any(r["encoder_grads"]) and r["encoder_same"] and r["head_changed"]
    # optimizer state is the head's (plus ZeRO's alignment padding), never the encoder's
    assert r["head_numel"] <= r["optimizer_numel"] < r["head_numel"] + 1024 < r["encoder_numel"]


# --------------------------------------------------------------------------- end to end, tiny demo


def _long_config(data: Path, out: Path, task: dict, **sections) -> dict:
    return tiny_config(
        data,
        out,
        model={"name": "vit_debug", "overrides": {"pos_embed": "learned", "pool": "mean"}},
        token_dropout={"drop_ratio": 0.75},
        data={"index": str(data / "long.parquet"), "num_frames": 8, "test_split": None, "eval_batch_size": 2},
        task=task,
        train={"max_steps": 4, "eval_every": 2},
        checkpoint={"every_steps": 0, "save_final": False},
        **sections,
    )


@pytest.mark.slow
def test_long_video_trains_and_evaluates_every_mode(demo_data, tmp_path):
    out = tmp_path / "out"
    task = {
        "name": "long_video",
        "eval_num_frames": 16,
        "eval_modes": ["full", "chunked", "draws", "offsets"],
        "chunk_frames": 8,
        "eval_draws": 2,
        "eval_offsets": 2,
    }
    cfg = write_config(_long_config(demo_data, out, task), tmp_path / "cfg.yaml")
    proc = launch(
        ["scripts/train.py", "--ds_config", "ds_configs/zero2.json", "--config", str(cfg)]
        + ["--set", "model.activation_checkpointing=torch", "--set", "checkpoint.save_final=true"],
        nprocs=1,
    )
    final = json.loads((out / "final_metrics.json").read_text())
    for mode in ("full", "chunked", "draws", "offsets"):
        assert final[f"val_{mode}/num_samples"] == 2, mode  # the tiny demo's 2 val videos, once each
        assert 0.0 <= final[f"val_{mode}/top1"] <= 100.0 and np.isfinite(final[f"val_{mode}/loss"])
        assert f"val_{mode} top-1" in proc.stdout
    history = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    mid = [h for h in history if h.get("step") == 2]
    assert mid and all(not any(k.startswith(("val_chunked", "val_draws")) for k in h) for h in mid)
    resolved = (out / "config.yaml").read_text()
    assert "eval_draw_ratio: 0.75" in resolved and "num_classes: 4" in resolved
    # scripts/eval.py runs every mode on the checkpoint, each under its own prefix, with the same result.
    launch(
        ["scripts/eval.py", "--checkpoint", str(out / "checkpoints"), "--split", "val"]
        + ["--output_dir", str(tmp_path / "ev"), "--set", "tracking.enabled=false"],
        nprocs=1,
    )
    got = json.loads((tmp_path / "ev" / "eval_val_metrics.json").read_text())
    for mode in ("full", "chunked", "draws", "offsets"):
        assert got[f"eval_val_{mode}/top1"] == final[f"val_{mode}/top1"], mode
        assert got[f"eval_val_{mode}/loss"] == pytest.approx(final[f"val_{mode}/loss"], rel=1e-4), mode


@pytest.mark.slow
def test_two_stage_trains_on_the_same_data(demo_data, tmp_path):
    out = tmp_path / "out"
    weights = tmp_path / "clip_encoder.pt"
    torch.save(
        create_model("vit_debug", num_frames=4, pos_embed="learned", pool="mean").state_dict(), weights
    )
    task = {
        "name": "long_video_two_stage",
        "clip_frames": 4,
        "eval_num_frames": 16,
        "head_dim": 32,
        "head_heads": 2,
    }
    cfg = _long_config(demo_data, out, task, pmae={"enabled": False})
    cfg["model"]["pretrained"] = str(weights)
    proc = launch(
        [
            "scripts/train.py",
            "--ds_config",
            "ds_configs/zero2.json",
            "--config",
            str(write_config(cfg, tmp_path / "c.yaml")),
        ],
        nprocs=1,
    )
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["val/num_samples"] == 2 and 0.0 <= final["val/top1"] <= 100.0
    assert "two-stage: frozen encoder on clips of 4 frames" in proc.stdout


def test_pretrained_short_clip_model_starts_all_but_the_head(tmp_path):
    torch.manual_seed(7)
    short = create_model("vit_debug", num_frames=4, num_classes=7, pos_embed="learned", pool="mean")
    torch.save(short.state_dict(), tmp_path / "k400_like.pt")
    d = _cfg_dict()
    d["model"]["pretrained"] = str(tmp_path / "k400_like.pt")
    enc = build_task(config_from_dict(d)).model.encoder
    assert enc.head.out_features == 4  # the activity head is new (a 7-class head would not fit)
    assert torch.equal(enc.blocks[0].attn.qkv.weight, short.blocks[0].attn.qkv.weight)
    assert enc.pos_embed_temporal.shape[1] == 4  # resized from the 4-frame clip's 2 steps to 8 frames' 4


@pytest.mark.parametrize(
    "name",
    [
        "demo_long_video.yaml",
        "demo_long_video_two_stage.yaml",
        "breakfast_vitb16_turbo.yaml",
        "coin_vitb16_turbo.yaml",
    ],
)
@pytest.mark.slow
def test_long_video_configs_build_their_task(name):
    from turbo_ds.config import load_config

    # no weights or index on a test machine: no pretrained file, the class count given
    cfg = load_config(ROOT / "configs" / name, ["model.pretrained=null", "task.num_classes=4"])
    task = build_task(cfg)
    assert task.task_name == cfg.task.name and task.train_data().sampler == "uniform"
    prefixes = [s.metric_prefix for s in task.eval_specs()]
    assert prefixes == (
        ["val"] if "two_stage" in name else [f"val_{m}" for m in cfg.task.options["eval_modes"]]
    )


def test_sincos_checkpoint_starts_learned_tables_at_its_values(tmp_path):
    torch.manual_seed(8)
    short = create_model("vit_debug", num_frames=8, pool="mean").eval()  # sin-cos positions
    torch.save(short.state_dict(), tmp_path / "sincos.pt")
    d = _cfg_dict()  # learned tables
    d["model"]["pretrained"] = str(tmp_path / "sincos.pt")
    enc = build_task(config_from_dict(d)).model.encoder.eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():  # the same function of the clip, now with tables that learn
        torch.testing.assert_close(enc(video, return_features=True).pooled, short(video))
    assert enc.pos_embed_temporal.requires_grad
