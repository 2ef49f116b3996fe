"""Video-text task: named losses and CLIP's temperature, text tower modes, the reference MIL-NCE on raw
embeddings, alignment forward, the retrieval / alignment evaluators' cross-rank reduction, and a frozen
text tower under ZeRO-2 and ZeRO-3 (no gradient, no optimizer state, weights unchanged) over 2 gloo
ranks, also with the reference MIL-NCE's frozen temperature under ZeRO-2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port, set_rank_env

from turbo_ds.config import ConfigError, config_from_dict
from turbo_ds.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**task):
    return config_from_dict(
        {
            "model": {"name": "vit_debug"},
            "token_dropout": {"drop_ratio": 0.5},
            "pmae": {"enabled": True, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
            "data": {"num_frames": 4, "img_size": 32},
            "task": {"name": "video_text", "text_model": "turbo-tiny", "context_length": 16, **task},
            "optim": {"micro_batch_size": 4, "lr": 1e-2, "warmup_steps": 0},
            "train": {"max_steps": 3},
        }
    )


def _batch(task, b=4, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = ["red", "green", "blue", "left", "right", "up", "down", "seven"]
    texts = [[" ".join(words[(i * 3 + j + seed) % 8] for j in range(3)) for _ in range(k)] for i in range(b)]
    tok = task.tokenizer()
    return {
        "video": torch.randn(b, 3, 4, 32, 32, generator=g),
        "text_tokens": torch.stack([tok(t) for t in texts]),
        "caption_mask": torch.ones(b, k, dtype=torch.bool),
        "sample_idx": torch.arange(b) + 10 * seed,
    }


def test_losses_temperature_and_clamp():
    torch.manual_seed(0)
    task = build_task(_cfg(mae_weight=0.3)).train()
    out = task(_batch(task))
    assert set(out.losses) == {"nce_loss", "mae_loss"}
    assert float(out.loss.detach()) == pytest.approx(float(sum(v.detach() for v in out.losses.values())))
    assert float(out.metrics["temperature"]) == pytest.approx(0.07, rel=1e-5)
    assert 0.0 <= float(out.metrics["v2t_acc"]) <= 100.0
    with torch.no_grad():
        task.logit_scale.fill_(math.log(500.0))
    assert float(task.scale().detach()) == 100.0  # CLIP's clamp
    assert out.extras["video_emb"].shape == (4, task.text.embed_dim)


@pytest.mark.parametrize("mode", ["frozen", "last_n", "full"])
def test_text_tower_modes_get_gradients_or_not(mode):
    torch.manual_seed(0)
    task = build_task(_cfg(text_mode=mode)).train()
    task(_batch(task)).loss.backward()
    text_grads = {n: p.grad is not None for n, p in task.text.named_parameters()}
    if mode == "frozen":
        assert not any(text_grads.values()) and not task.text.training
    elif mode == "full":
        assert all(text_grads.values())
    else:
        assert any(text_grads.values()) and not all(text_grads.values())
    assert task.logit_scale.grad is not None
    assert all(p.grad is not None for p in task.model.encoder.parameters() if p.requires_grad)


def test_milnce_option_and_bad_options():
    torch.manual_seed(0)
    task = build_task(_cfg(loss="milnce", num_captions=3)).train()
    out = task(_batch(task, k=3))
    assert math.isfinite(float(out.losses["nce_loss"]))
    with pytest.raises(ConfigError, match="task.num_captions.*use loss: milnce or milnce_miech"):
        build_task(_cfg(loss="infonce", num_captions=2))
    with pytest.raises(ConfigError, match="task.loss.*must be one of infonce, milnce, milnce_miech"):
        build_task(_cfg(loss="milnce-miech"))
    with pytest.raises(ConfigError, match="task.text_mode"):
        build_task(_cfg(text_mode="half"))


@pytest.mark.parametrize("k", [1, 3])
def test_milnce_miech_scores_raw_embeddings_without_temperature(k):
    from turbo_ds.losses.contrastive import milnce_miech

    torch.manual_seed(0)
    task = build_task(_cfg(loss="milnce_miech", num_captions=k, learn_temperature=True))
    assert not task.logit_scale.requires_grad  # no temperature: nothing for the optimizer to wait on
    batch = _batch(task, k=k)
    if k > 1:
        batch["caption_mask"][0, 0] = False
    with torch.no_grad():
        out = task.eval()(batch)  # all tokens: the same features again below
        video = task.model(batch["video"]).features
        text = task.text(batch["text_tokens"].flatten(0, 1)).reshape(4, k, -1)
    want = milnce_miech(video, text, mask=batch["caption_mask"], gather=False)["loss"]
    torch.testing.assert_close(out.losses["nce_loss"], want)
    assert "temperature" not in out.metrics and "logit_scale" not in out.metrics
    out = task.train()(batch)
    out.loss.backward()
    assert task.logit_scale.grad is None
    assert all(p.grad is not None for p in task.model.encoder.parameters() if p.requires_grad)


def test_alignment_forward_embeds_every_second_and_every_sentence():
    torch.manual_seed(0)
    task = build_task(_cfg()).eval()
    b = _batch(task, b=5)
    tokens = b["text_tokens"][:3, 0]
    text_calls = []
    task.text.register_forward_hook(lambda *_: text_calls.append(1))
    with torch.no_grad():
        out = task({"video": b["video"][None], "text_tokens": tokens[None]})
        clips = F.normalize(task.model(b["video"]).features, dim=-1)
        text = F.normalize(task.text(tokens), dim=-1)
        # a video's later chunk: no sentences, yet the text tower runs (ZeRO-3 gathers collectively)
        later = task({"video": b["video"][None, :2], "text_tokens": tokens[None, :0]})
    torch.testing.assert_close(out.extras["clip_emb"], clips)
    torch.testing.assert_close(out.extras["text_emb"], text)
    assert later.extras["clip_emb"].shape == (2, clips.shape[1]) and later.extras["text_emb"].shape[0] == 0
    assert len(text_calls) == 3  # the two alignment forwards and the reference


class FakeComm:
    """Two 'ranks' in one process: rank 1's objects are given up front."""

    world_size = 2

    def __init__(self, other):
        self.other = other

    def all_gather_object(self, obj):
        return [obj, self.other]


def test_retrieval_evaluator_gathers_each_sample_once():
    from turbo_ds.tasks.base import TaskOutput
    from turbo_ds.tasks.video_text import RetrievalEvaluator

    emb = torch.eye(6)
    ev0, ev1 = RetrievalEvaluator(), RetrievalEvaluator()
    # rank 0 has samples 0-2 and (padding-free) a duplicate of 5; rank 1 has 3-5
    for ev, ids in ((ev0, [0, 1, 2, 5]), (ev1, [3, 4, 5])):
        idx = torch.tensor(ids)
        ev.update(
            {"sample_idx": idx},
            TaskOutput(torch.zeros(()), {}, extras={"video_emb": emb[idx], "text_emb": emb[idx]}),
        )
    local1 = [np.concatenate(ev1.ids), np.concatenate(ev1.video), np.concatenate(ev1.text)]
    m = ev0.compute(FakeComm(local1))
    assert m["num_samples"] == 6 and m["t2v_r1"] == 100.0 and m["v2t_medr"] == 1.0


def test_alignment_evaluator_joins_chunks_of_all_ranks():
    from turbo_ds.tasks.base import TaskOutput
    from turbo_ds.tasks.video_text import AlignmentEvaluator

    def update(ev, vid, chunk, num_chunks, clips, text=None, starts=(), ends=(), alignable=()):
        """One chunk; ``text`` (M, E) on a video's first chunk, with its sentences' spans and flags."""
        batch = {
            "video_id": [vid],
            "chunk_index": torch.tensor([chunk]),
            "num_chunks": torch.tensor([num_chunks]),
            "caption_start_s": torch.tensor([list(starts)]),
            "caption_end_s": torch.tensor([list(ends)]),
            "alignable": torch.tensor([list(alignable)], dtype=torch.bool),
        }
        text = torch.zeros(0, clips.shape[1]) if text is None else text
        ev.update(batch, TaskOutput(torch.zeros(()), {}, extras={"clip_emb": clips, "text_emb": text}))

    ev0, ev1 = AlignmentEvaluator(), AlignmentEvaluator()
    # Unit text embeddings: a video's sim is its clips' columns. Video a (3 s), in two chunks on two
    # ranks: sentence 0 peaks at t=1 (span 1.2-1.8: hit), sentence 1 not alignable (low score).
    sim_a = torch.tensor([[0.1, 0.9, 0.2], [0.0, 0.1, 0.0]])
    update(ev1, "a", 0, 2, sim_a.T[:2], torch.eye(2), [1.2, 0.0], [1.8, 1.0], [True, False])
    update(ev0, "a", 1, 2, sim_a.T[2:])
    # video b: sentence peaks at t=0 but spans 2-3 (miss)
    sim_b = torch.tensor([[0.8, 0.1, 0.3, 0.2]])
    update(ev1, "b", 0, 1, sim_b.T, torch.eye(1), [2.0], [3.0], [True])
    # video c lost its second chunk (it failed to decode): left out, not scored on half its seconds
    update(ev0, "c", 0, 2, torch.eye(1), torch.eye(1), [0.0], [1.0], [True])
    other = (ev1.clips, ev1.texts)
    sims = ev0.similarities(FakeComm(other))
    assert sorted(sims) == ["a", "b"]
    np.testing.assert_allclose(sims["a"][0], sim_a.numpy())
    np.testing.assert_allclose(sims["b"][0], sim_b.numpy())
    m = ev0.compute(FakeComm(other))
    assert m["align_r1"] == 50.0 and m["align_num_videos"] == 2 and m["align_num_sentences"] == 3
    assert m["align_roc_auc"] == 1.0  # both alignable sentences score above the non-alignable one


# --------------------------------------------------------------------------- ZeRO-2 / ZeRO-3, 2 ranks


def _zero_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, world, port)
    import deepspeed.comm as dist

    from turbo_ds.engine import Engine
    from turbo_ds.engine.engine import gathered_parameters

    results = {}
    runs = {"zero2": {}, "zero3": {}, "zero2_milnce_miech": {"loss": "milnce_miech", "num_captions": 2}}
    for run, options in runs.items():
        stage, k = run.split("_")[0], options.get("num_captions", 1)
        cfg = _cfg(text_mode="frozen", **options)
        torch.manual_seed(0)
        task = build_task(cfg)
        text_numel = sum(p.numel() for p in task.text.parameters())
        trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
        text_before = [p.detach().clone() for p in task.text.parameters()]
        video_before = [p.detach().clone() for p in task.model.encoder.parameters()]
        task_scale = task.logit_scale.detach().clone()
        eng = Engine.create(task, cfg, ROOT / "ds_configs" / f"{stage}.json")
        losses = []
        for step in range(3):
            out = eng(eng.to_device(_batch(task, b=4, k=k, seed=10 * step + rank)))
            eng.backward(out.loss)
            eng.step()
            losses.append(float(eng.all_reduce_mean(out.loss.detach())))
        state = eng.optimizer.optimizer.state  # the torch AdamW under DeepSpeed's ZeRO optimizer
        local = sum(s["exp_avg"].numel() for s in state.values() if "exp_avg" in s)
        total = torch.tensor(float(local))
        dist.all_reduce(total)
        with gathered_parameters(eng):
            text_same = all(
                torch.equal(a, b) for a, b in zip(text_before, eng.module.text.parameters(), strict=True)
            )
            video_changed = any(
                not torch.equal(a, b)
                for a, b in zip(video_before, eng.module.model.encoder.parameters(), strict=True)
            )
            scale_same = torch.equal(eng.module.logit_scale.detach().cpu(), task_scale)
        results[run] = {
            "losses": losses,
            "logit_scale_same": scale_same,
            "optimizer_numel": float(total),
            "trainable": trainable,
            "text_numel": text_numel,
            "text_same": text_same,
            "video_changed": video_changed,
            "text_requires_grad": any(p.requires_grad for p in eng.module.text.parameters()),
        }
    with open(Path(out_dir) / f"rank{rank}.json", "w") as f:
        json.dump(results, f)
    from turbo_ds.engine import distributed

    distributed.destroy()  # a gloo group left to interpreter exit can abort the process ("terminate called")


@pytest.mark.slow
def test_frozen_text_tower_under_zero2_and_zero3(tmp_path):
    mp.start_processes(
        _zero_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for stage in ("zero2", "zero3", "zero2_milnce_miech"):
        a = r0[stage]
        assert a["losses"] == r1[stage]["losses"] and all(math.isfinite(v) for v in a["losses"])
        # the temperature trains, except with the reference MIL-NCE (no optimizer state either: below)
        assert a["logit_scale_same"] == (stage == "zero2_milnce_miech"), stage
        assert a["text_same"] and a["video_changed"] and not a["text_requires_grad"], stage
        # optimizer state covers the trainable parameters (plus ZeRO's alignment padding), never the tower
        assert a["trainable"] <= a["optimizer_numel"] < a["trainable"] + 1024, (stage, a)
        assert a["text_numel"] > 1024
    # the same model, data and seed: ZeRO-3 trains like ZeRO-2
    assert r0["zero3"]["losses"] == pytest.approx(r0["zero2"]["losses"], rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------- alignment in chunks

# Two videos at 10 fps: 10 s and 7.5 s (8 seconds get a clip); [alignable, start_s, end_s, text].
ALIGN_VIDEOS = {
    "long": (
        100,
        [[1, 1.0, 2.5, "red green blue"], [0, 4.0, 5.0, "left right up"], [1, 6.0, 8.0, "down seven"]],
    ),
    "short": (75, [[1, 0.5, 2.0, "green blue left"], [1, 5.0, 7.0, "up down seven red"]]),
}


@pytest.fixture(scope="module")
def align_index(tmp_path_factory):
    from video_utils import write_test_video

    from data_index.builders import build

    root = tmp_path_factory.mktemp("align")
    for i, (vid, (n, _)) in enumerate(ALIGN_VIDEOS.items()):
        write_test_video(root / f"{vid}.mp4", n=n, fps=10, seed=i)
    ann = root / "htm_align.json"
    ann.write_text(json.dumps({vid: sents for vid, (_, sents) in ALIGN_VIDEOS.items()}))
    build("htm_align", [ann], root, root / "align.parquet", workers=1)
    return root / "align.parquet"


def _align_cfg(index, **task):
    return _cfg(align_index=str(index), retrieval_split=None, **task)


def _align_loader(task, cfg, out_dir, rank=0, world=1):
    """The loader the task's alignment evaluation asks for, as the trainer builds it."""
    from turbo_ds.loop.data import build_loader

    (spec,) = task.eval_specs(split="test")
    return build_loader(cfg, spec.data, spec.split, rank, world, Path(out_dir))


def _one_forward_sims(task, index, max_seconds=None):
    """The sims as alignment computed them before chunking: all seconds of a video in one forward."""
    from turbo_ds.data import build_dataloader

    kw = dict(num_frames=4, stride=2, img_size=32, num_workers=0, text_transform=task.tokenizer())
    loader = build_dataloader(
        index, split="test", sampler="per_second", train=False, max_seconds=max_seconds, **kw
    )
    sims = {}
    with torch.no_grad():
        for b in loader:
            clips = F.normalize(task.model(b["video"][0]).features, dim=-1)
            text = F.normalize(task.text(b["text_tokens"][0]), dim=-1)
            sims[b["video_id"][0]] = (text @ clips.T).numpy()
    return sims


class SoloComm:
    world_size = 1

    def all_gather_object(self, obj):
        return [obj]


@pytest.mark.slow
@pytest.mark.parametrize("max_seconds", [None, 5])
def test_chunked_alignment_equals_one_forward(align_index, tmp_path, max_seconds):
    from turbo_ds.tasks.video_text import AlignmentEvaluator

    results = {}
    for chunk in (100, 3, 1):  # 100 >= S: each video in one item and one forward
        torch.manual_seed(0)
        cfg = _align_cfg(align_index, align_chunk_seconds=chunk, align_max_seconds=max_seconds)
        task = build_task(cfg).eval()
        loader = _align_loader(task, cfg, tmp_path)
        ev = AlignmentEvaluator()
        sizes = []
        with torch.no_grad():
            for batch in loader:
                sizes.append(batch["video"].shape[1])
                ev.update(batch, task(batch))
        assert max(sizes) <= chunk
        results[chunk] = (ev.similarities(SoloComm()), ev.compute(SoloComm()), sizes)
    seconds = {"long": 10, "short": 8} if max_seconds is None else {"long": 5, "short": 5}
    assert sum(results[100][2]) == sum(seconds.values()) and len(results[100][2]) == 2
    assert len(results[3][2]) == sum(-(-s // 3) for s in seconds.values())
    reference = _one_forward_sims(task, align_index, max_seconds)
    for chunk, (sims, metrics, _) in results.items():
        assert sorted(sims) == sorted(reference)
        for vid, ref in reference.items():
            assert sims[vid][0].shape == (len(ALIGN_VIDEOS[vid][1]), seconds[vid])
            np.testing.assert_allclose(sims[vid][0], ref, rtol=0, atol=1e-5, err_msg=f"chunk {chunk} {vid}")
        assert metrics == pytest.approx(results[100][1]), chunk
    assert results[1][1]["align_num_videos"] == 2 and results[1][1]["align_num_sentences"] == 5


def test_align_chunk_seconds_is_checked():
    assert build_task(_cfg()).options.align_chunk_seconds == 128
    with pytest.raises(ConfigError, match="task.align_chunk_seconds' = 0: must be >= 1"):
        build_task(_cfg(align_chunk_seconds=0))


def _align_worker(rank: int, world: int, port: int, index: str, out_dir: str) -> None:
    set_rank_env(rank, world, port)
    from turbo_ds.engine import Engine
    from turbo_ds.loop.evaluation import evaluate
    from turbo_ds.tasks.video_text import AlignmentEvaluator

    cfg = _align_cfg(index, align_chunk_seconds=3)
    torch.manual_seed(0)
    task = build_task(cfg)
    eng = Engine.create(task, cfg, ROOT / "ds_configs" / "zero3.json")
    loader = _align_loader(task, cfg, out_dir, rank, world)
    ev = AlignmentEvaluator()
    metrics = evaluate(eng, loader, ev, prefix="test")
    sims = ev.similarities(eng)
    if rank == 0:
        np.savez(Path(out_dir) / "sims.npz", **{vid: v[0] for vid, v in sims.items()})
    mine = sorted(f"{vid}/{c}" for vid, c in ev.clips)
    with open(Path(out_dir) / f"align_rank{rank}.json", "w") as f:
        json.dump({"metrics": metrics, "chunks": mine, "batches": len(loader)}, f)
    from turbo_ds.engine import distributed

    distributed.destroy()  # a gloo group left to interpreter exit can abort the process


@pytest.mark.slow
def test_chunked_alignment_over_two_ranks_under_zero3(align_index, tmp_path):
    """Chunks of one video embedded on both ranks (ZeRO-3: the same forwards on every rank, the text
    tower in each) and joined by the evaluator: the same sims as one forward per video."""
    mp.start_processes(
        _align_worker,
        args=(2, free_port(), str(align_index), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    r0, r1 = (json.loads((tmp_path / f"align_rank{r}.json").read_text()) for r in range(2))
    assert r0["metrics"] == r1["metrics"] and (r0["batches"], r1["batches"]) == (4, 3)  # 4 + 3 chunks
    assert (
        {c.split("/")[0] for c in r0["chunks"]}
        == {c.split("/")[0] for c in r1["chunks"]}
        == {"long", "short"}
    )
    assert sorted(r0["chunks"] + r1["chunks"]) == sorted(
        [f"long/{c}" for c in range(4)] + [f"short/{c}" for c in range(3)]
    )
    torch.manual_seed(0)
    task = build_task(_align_cfg(align_index)).eval()
    reference = _one_forward_sims(task, align_index)
    sims = np.load(tmp_path / "sims.npz")
    assert sorted(sims.files) == sorted(reference)
    for vid, ref in reference.items():
        np.testing.assert_allclose(sims[vid], ref, rtol=0, atol=1e-5, err_msg=vid)
    assert r0["metrics"]["test/align_num_videos"] == 2
