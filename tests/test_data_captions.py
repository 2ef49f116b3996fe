"""Text-video loading: caption sampler (train / eval), per_second alignment sampler, text_transform,
and the demo's video-text part."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from video_utils import tiny_demo, write_test_video  # noqa: F401

from data_index.builders import build
from turbo_ds.data import build_dataloader, per_second_clip_indices
from turbo_ds.data.schema import VideoIndex, read_errors

FPS = 10
# video -> (frames, [[alignable, start, end, text], ...]); every text is unique
VIDEOS = {
    "v0": (
        80,
        [
            [1, 0.0, 1.0, "zero one"],
            [1, 1.5, 2.5, "one five"],
            [0, 2.0, 3.0, "two three, not alignable"],
            [1, 3.0, 4.0, "three four"],
            [1, 4.5, 6.0, "four five"],
            [1, 6.5, 7.5, "six five"],
        ],
    ),
    "v1": (40, [[1, 1.0, 3.0, "v1 only"]]),
    "v2": (35, [[1, 0.5, 1.5, "v2 first"], [0, 2.0, 3.0, "v2 hidden"]]),
}


class HashTokenizer:
    """Words -> ids 1..999 (a stable hash), padded with 0 / cut to ``length``: picklable."""

    def __init__(self, length: int = 6):
        self.length = length

    def __call__(self, texts):
        out = torch.zeros(len(texts), self.length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [sum(map(ord, w)) % 999 + 1 for w in t.split()][: self.length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@pytest.fixture(scope="module")
def cap_index(tmp_path_factory):
    """(train index, test index, root): the same three videos, split train / test."""
    root = tmp_path_factory.mktemp("captions")
    for i, (vid, (n, _)) in enumerate(VIDEOS.items()):
        write_test_video(root / f"{vid}.mp4", n=n, fps=FPS, seed=i)
    ann = root / "ann.json"
    ann.write_text(json.dumps({vid: sents for vid, (_, sents) in VIDEOS.items()}))
    build("htm_align", [ann], root, root / "train.parquet", workers=1, split="train")
    build("htm_align", [ann], root, root / "test.parquet", workers=1)
    return root / "train.parquet", root / "test.parquet", root


def _kw(**over):
    kw = dict(sampler="caption", num_frames=4, stride=1, img_size=16, num_workers=0, batch_size=3)
    kw.update(over)
    return kw


def _captions_of(index_path, split):
    return {r["video_id"]: r["captions"] for r in VideoIndex(index_path, split=split).table.to_pylist()}


def _centre(c):
    return (c["start_s"] + c["end_s"]) / 2


def _expected_neighbours(caps, text, clip_centre, k, only_alignable=True):
    usable = [c for c in caps if not (only_alignable and c["alignable"] is False)]
    chosen = next(c for c in usable if c["text"] == text)
    others = sorted(
        (c for c in usable if c is not chosen),
        key=lambda c: (abs(_centre(c) - clip_centre), caps.index(c)),
    )[: k - 1]
    texts = [chosen["text"]] + [c["text"] for c in others]
    return texts + [chosen["text"]] * (k - len(texts)), [True] * len(texts) + [False] * (k - len(texts))


def test_train_length_items_and_neighbours(cap_index):
    train, _, _ = cap_index
    caps = _captions_of(train, "train")
    dl = build_dataloader(train, split="train", samples_per_video=4, num_captions=3, **_kw())
    ds = dl.dataset
    assert len(ds) == 3 * 4 and len(dl.sampler) == 12 and len(dl) == 4
    items = [b for b in dl]
    idx = [i for b in items for i in b["sample_idx"].tolist()]
    assert sorted(idx) == list(range(12))
    order = ["v0", "v1", "v2"]
    for b in items:
        assert b["video"].shape == (3, 3, 4, 16, 16) and b["caption_mask"].shape == (3, 3)
        assert b["caption_mask"].dtype == torch.bool and b["clip_center_s"].dtype == torch.float32
        for j, vid, text, texts, mask, centre in zip(
            b["sample_idx"].tolist(),
            b["video_id"],
            b["text"],
            b["captions"],
            b["caption_mask"].tolist(),
            b["clip_center_s"].tolist(),
            strict=True,
        ):
            assert vid == order[j // 4]  # item j comes from video j // samples_per_video
            assert text != "v2 hidden" and text != "two three, not alignable"  # only_alignable
            want_texts, want_mask = _expected_neighbours(caps[vid], text, centre, 3)
            assert (texts, mask) == (want_texts, want_mask)
    # v1 has a single caption: repeated, the repeats masked
    v1 = ds[4]
    assert v1["captions"] == ["v1 only"] * 3 and v1["caption_mask"].tolist() == [True, False, False]
    # captions vary over items and epochs (drawn from seed, epoch, item)
    drawn = {ds[(j, e)]["text"] for j in range(4) for e in range(4)}
    assert len(drawn) > 2


def test_nearest_neighbours_by_hand(cap_index):
    _, test, _ = cap_index
    for only, want in (
        (True, ["three four", "one five", "four five"]),
        (False, ["three four", "two three, not alignable", "one five"]),
    ):
        ds = build_dataloader(
            test, split="test", train=False, only_alignable=only, num_captions=3, **_kw()
        ).dataset
        item = next(ds[i] for i in range(len(ds)) if ds[i]["text"] == "three four")
        assert item["clip_center_s"] == pytest.approx(3.5, abs=0.5 / FPS)
        assert item["captions"] == want and item["caption_mask"].all()


@pytest.mark.parametrize("jitter", [0.0, 0.6])
def test_jitter_keeps_clip_centre_near_the_caption(cap_index, jitter):
    train, _, _ = cap_index
    caps = {c["text"]: c for cs in _captions_of(train, "train").values() for c in cs}
    ds = build_dataloader(train, split="train", samples_per_video=2, jitter_s=jitter, **_kw()).dataset
    offsets = []
    for epoch in range(8):
        for j in range(len(ds)):
            item = ds[(j, epoch)]
            off = item["clip_center_s"] - _centre(caps[item["text"]])
            assert abs(off) <= jitter + 0.5 / FPS + 1e-6, (item["text"], off)
            offsets.append(off)
    if jitter:
        assert np.std(offsets) > jitter / 4  # really moved around
    else:
        assert max(abs(o) for o in offsets) <= 0.5 / FPS + 1e-6


@pytest.mark.parametrize("only_alignable", [True, False])
def test_eval_covers_every_caption_once_across_ranks(cap_index, only_alignable):
    _, test, _ = cap_index
    caps = _captions_of(test, "test")
    want = sorted(
        (vid, c["text"])
        for vid, cs in caps.items()
        for c in cs
        if not (only_alignable and c["alignable"] is False)
    )
    seen, idx = [], []
    for rank in range(2):
        dl = build_dataloader(
            test, split="test", train=False, rank=rank, world_size=2, only_alignable=only_alignable, **_kw()
        )
        assert len(dl.dataset) == len(want)
        for b in dl:
            seen.extend(zip(b["video_id"], b["text"], strict=True))
            idx.extend(b["sample_idx"].tolist())
            for vid, text, centre in zip(b["video_id"], b["text"], b["clip_center_s"].tolist(), strict=True):
                c = next(c for c in caps[vid] if c["text"] == text)
                assert abs(centre - _centre(c)) <= 0.5 / FPS + 1e-6  # centred, no jitter
    assert sorted(seen) == want  # each (video, caption) pair exactly once over the two ranks
    assert sorted(idx) == list(range(len(want)))


def test_caption_mode_resumes_mid_epoch(cap_index):
    train, _, _ = cap_index
    kw = _kw(split="train", samples_per_video=3, batch_size=2, seed=5, rank=1, world_size=2)
    ref = build_dataloader(train, **kw)
    ref.set_epoch(2)
    full = [i for b in ref for i in b["sample_idx"].tolist()]
    assert len(full) == 4  # 9 items, 2 ranks, drop_last: 4 each, 2 batches of 2
    dl = build_dataloader(train, **kw)
    dl.set_epoch(2)
    first = next(iter(dl))["sample_idx"].tolist()
    state = dl.state_dict()
    assert state["num_samples"] == 9 and state["position"] == 2
    resumed = build_dataloader(train, **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert first + [i for b in resumed for i in b["sample_idx"].tolist()] == full


@pytest.mark.parametrize("num_workers", [0, 1])
def test_text_transform_tokens(cap_index, num_workers):
    train, test, _ = cap_index
    tok = HashTokenizer(6)
    dl = build_dataloader(
        train, split="train", num_captions=2, text_transform=tok, **_kw(num_workers=num_workers)
    )
    b = next(iter(dl))
    assert b["text_tokens"].shape == (3, 2, 6) and b["text_tokens"].dtype == torch.long
    for tokens, texts in zip(b["text_tokens"], b["captions"], strict=True):
        assert torch.equal(tokens, tok(texts))  # tokenized in the worker, same ids
    sec = build_dataloader(
        test,
        split="test",
        train=False,
        text_transform=tok,
        **_kw(sampler="per_second", num_workers=num_workers),
    )
    b = next(iter(sec))
    assert b["text_tokens"].shape == (1, len(b["captions"][0]), 6) and b["text_tokens"].dtype == torch.long


def test_per_second_items(cap_index):
    _, test, _ = cap_index
    caps = _captions_of(test, "test")
    dl = build_dataloader(
        test,
        split="test",
        sampler="per_second",
        train=False,
        num_frames=4,
        stride=2,
        img_size=16,
        batch_size=8,  # forced to 1
        num_workers=0,
    )
    batches = list(dl)
    assert [b["video_id"] for b in batches] == [["v0"], ["v1"], ["v2"]]
    for b in batches:
        vid = b["video_id"][0]
        n_frames, _ = VIDEOS[vid]
        s = int(np.ceil(n_frames / FPS))  # v2: 3.5 s -> 4 clips
        assert b["video"].shape == (1, s, 3, 4, 16, 16) and b["video"].dtype == torch.float32
        assert torch.equal(b["clip_times"], torch.arange(s, dtype=torch.float32)[None] + 0.5)
        rows = caps[vid]
        assert b["captions"] == [[c["text"] for c in rows]]  # all sentences, alignable or not
        assert b["caption_start_s"].shape == b["caption_end_s"].shape == (1, len(rows))
        assert b["caption_start_s"].dtype == torch.float32
        assert torch.allclose(b["caption_start_s"][0], torch.tensor([c["start_s"] for c in rows]))
        assert b["alignable"].tolist() == [[c["alignable"] for c in rows]]
        # the clips differ (one per second), not one clip repeated
        assert (b["video"][0, 0] - b["video"][0, -1]).abs().mean() > 0.05
    assert [b["video"].shape[1] for b in batches] == [8, 4, 4]
    capped = build_dataloader(test, split="test", train=False, max_seconds=3, **_kw(sampler="per_second"))
    assert [b["video"].shape[1] for b in capped] == [3, 3, 3]
    with pytest.raises(ValueError, match="evaluation sampler"):
        build_dataloader(test, split="test", **_kw(sampler="per_second"))


@pytest.mark.parametrize(("chunk", "max_seconds"), [(1, None), (3, None), (3, 5)])
def test_per_second_chunks_hold_at_most_chunk_seconds(cap_index, chunk, max_seconds):
    """An item holds one chunk of at most ``chunk_seconds`` clips; a video's chunks, in order, are its
    unchunked item cut in time; the text rides with the first chunk; ranks share the chunks."""
    _, test, _ = cap_index
    tok = HashTokenizer(6)
    kw = _kw(sampler="per_second", stride=2, text_transform=tok, max_seconds=max_seconds)
    whole = {b["video_id"][0]: b for b in build_dataloader(test, split="test", train=False, **kw)}
    dl = build_dataloader(test, split="test", train=False, chunk_seconds=chunk, **kw)
    seconds = {vid: b["video"].shape[1] for vid, b in whole.items()}  # v0: 8, v1: 4, v2: 4 (or 5, 4, 4)
    assert len(dl.dataset) == sum(-(-s // chunk) for s in seconds.values())
    chunks: dict[str, list] = {}
    for b in dl:
        assert b["video"].shape[0] == 1 and 1 <= b["video"].shape[1] <= chunk
        chunks.setdefault(b["video_id"][0], []).append(b)
    for vid, parts in chunks.items():
        ref = whole[vid]
        assert [int(p["chunk_index"][0]) for p in parts] == list(range(-(-seconds[vid] // chunk)))
        assert {int(p["num_chunks"][0]) for p in parts} == {len(parts)}
        assert torch.equal(torch.cat([p["video"] for p in parts], dim=1), ref["video"])
        assert torch.equal(torch.cat([p["clip_times"] for p in parts], dim=1), ref["clip_times"])
        first, later = parts[0], parts[1:]
        for key in ("caption_start_s", "caption_end_s", "alignable", "text_tokens"):
            assert torch.equal(first[key], ref[key]), key
        assert first["captions"] == ref["captions"] and len(ref["captions"][0]) > 0
        for p in later:  # the sentences once per video
            assert p["captions"] == [[]] and p["text_tokens"].shape == (1, 0, 6)
            assert p["caption_start_s"].shape == p["alignable"].shape == (1, 0)
    shares = [
        [
            (b["video_id"][0], int(b["chunk_index"][0]))
            for b in build_dataloader(
                test, split="test", train=False, chunk_seconds=chunk, rank=r, world_size=2, **kw
            )
        ]
        for r in range(2)
    ]
    everything = [(vid, int(p["chunk_index"][0])) for vid, parts in chunks.items() for p in parts]
    assert sorted(shares[0] + shares[1]) == sorted(everything)
    with pytest.raises(ValueError, match="chunk_seconds"):
        build_dataloader(test, split="test", train=False, chunk_seconds=0, **kw)
    with pytest.raises(ValueError, match="chunk_seconds"):
        build_dataloader(test, split="test", train=False, chunk_seconds=2, **_kw())


@pytest.mark.parametrize("n", [1, 9, 10, 11, 35, 80])
def test_per_second_clip_indices(n):
    clips = per_second_clip_indices(n, FPS, clip_len=4, stride=2)
    assert len(clips) == max(1, int(np.ceil(n / FPS)))
    for s, idx in enumerate(clips):
        assert idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < n and np.all(np.diff(idx) >= 0)
        centre = ((idx[0] + idx[-1]) / 2 + 0.5) / FPS
        if n >= 7 and 3.5 / FPS <= s + 0.5 <= (n - 3.5) / FPS:  # clip fits around s + 0.5 s
            assert abs(centre - (s + 0.5)) <= 0.5 / FPS + 1e-9
    assert len(per_second_clip_indices(80, FPS, 4, 2, max_seconds=5)) == 5
    assert len(per_second_clip_indices(300, 29.97, 4, 2)) == 11  # 10.01 s
    assert len(per_second_clip_indices(29970, np.float32(29.97), 4, 2)) == 1000  # float32 fps


def test_caption_kwargs_are_checked(cap_index):
    train, _, _ = cap_index
    with pytest.raises(ValueError, match="sampler='caption' only"):
        build_dataloader(train, split="train", **_kw(sampler="dense", samples_per_video=2))
    with pytest.raises(ValueError, match="num_captions >= 1"):
        build_dataloader(train, split="train", **_kw(num_captions=0))


def test_tiny_demo_video_text_part(tiny_demo):  # noqa: F811
    vlp = pq.read_table(tiny_demo / "vlp.parquet").to_pylist()
    align = pq.read_table(tiny_demo / "vlp_align.parquet").to_pylist()
    assert {r["split"] for r in vlp} == {"train", "val"} and len(vlp) == 6
    assert {r["split"] for r in align} == {"test"} and len(align) == 2
    assert read_errors(tiny_demo / "vlp.parquet") == [] == read_errors(tiny_demo / "vlp_align.parquet")
    for r in vlp:
        assert 2 <= len(r["captions"]) <= 3 and r["label"] == -1 and r["width"] == 32
        assert all(c["alignable"] is None for c in r["captions"])  # narration: unknown
        assert all(0 <= c["start_s"] < c["end_s"] <= r["duration_s"] + 1e-3 for c in r["captions"])
    flags = [c["alignable"] for r in align for c in r["captions"]]
    assert set(flags) == {True, False}
    for r in align:
        visible = [c for c in r["captions"] if c["alignable"]]
        hidden = [c for c in r["captions"] if not c["alignable"]]
        assert 2 <= len(visible) <= 3 and 1 <= len(hidden) <= 2
        colours = {c["text"].split()[1] for c in visible}
        assert len(colours) == len(visible)  # a different colour in every segment
        assert all(c["text"].split()[1] not in colours for c in hidden)  # an absent colour
        assert all(0 <= c["start_s"] < c["end_s"] <= r["duration_s"] + 1e-3 for c in hidden)
    assert (tiny_demo / "annotations" / "vlp_htm_align.json").exists()
    assert (tiny_demo / "annotations" / "vlp.csv").exists()
    b = next(
        iter(
            build_dataloader(
                tiny_demo / "vlp_align.parquet",
                split="test",
                sampler="per_second",
                train=False,
                num_frames=4,
                stride=2,
                img_size=32,
                num_workers=0,
            )
        )
    )
    assert b["video"].shape[:2] == (1, int(np.ceil(align[0]["duration_s"] - 1e-6)))


@pytest.mark.parametrize("sampler", ["caption", "per_second"])
def test_broken_video_replaced_and_reported(cap_index, tmp_path, sampler):
    import shutil

    _, test, root = cap_index
    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    (broken / "v1.mp4").write_bytes(b"")
    dl = build_dataloader(
        test,
        root=broken,
        split="test",
        train=False,
        max_failures=1,
        failure_log_dir=tmp_path / "log",
        **_kw(sampler=sampler, stride=2),
    )
    ids = [v for b in dl for v in b["video_id"]]
    assert len(ids) == len(dl.dataset) and "v1" not in ids  # every item delivered, by a replacement
    assert dl.failure_summary()["videos"] == {str(broken / "v1.mp4"): "zero-byte"}
    tried = [e for e in dl.dataset.failures.entries() if not e["skipped"]]
    assert len(tried) == 1  # v1's other items (one per caption) are replaced without opening it again


def test_group_by_video_keeps_a_videos_clips_in_one_global_batch(cap_index):
    """Shuffled by video: a video's samples_per_video clips are consecutive in the global order, so
    with 2 ranks they meet in one global batch; within an epoch they take distinct captions."""
    train, _, _ = cap_index
    spv, world, bs = 2, 2, 1
    loaders = [
        build_dataloader(
            train,
            split="train",
            samples_per_video=spv,
            group_by_video=True,
            rank=r,
            world_size=world,
            **_kw(batch_size=bs),
        )
        for r in range(world)
    ]
    for epoch in range(3):
        for dl in loaders:
            dl.set_epoch(epoch)
        steps = list(zip(*[list(dl) for dl in loaders], strict=True))
        for step in steps:  # the global batch of one step: one video's 2 clips
            ids = [i for b in step for i in b["sample_idx"].tolist()]
            assert len({i // spv for i in ids}) == 1, (epoch, ids)
            texts = [t for b in step for t in b["text"]]
            vid = step[0]["video_id"][0]
            if vid == "v0":  # 5 usable captions: the 2 clips take different ones
                assert len(set(texts)) == 2
    order = loaders[0].sampler.order(0)
    assert sorted(order.tolist()) == list(range(len(loaders[0].dataset)))
    with pytest.raises(ValueError, match="group_size"):
        from turbo_ds.data import ShardedSampler

        ShardedSampler(5, group_size=2)


def _batches(dl, grouped: bool, epochs=(0,)):
    """Every batch of ``epochs`` of a loader built with ``decode_once=grouped``."""
    assert dl.dataset.decode_once == grouped
    out = []
    for epoch in epochs:
        dl.set_epoch(epoch)
        out += list(dl)
    return out


def _assert_same_batches(a, b):
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if k == "load_s":
                continue
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


@pytest.mark.parametrize("train", [True, False])
def test_a_batch_decodes_each_video_once_and_gives_the_same_items(cap_index, monkeypatch, train):
    """Decode once, sample many: a batch's caption items of one video (group_by_video in training, a
    video's captions in order in evaluation) come from one decode call, and are exactly the items
    decoded one by one; the order (and so resume) does not change."""
    import turbo_ds.data.dataset as dataset_module

    index, _, _ = cap_index if train else (cap_index[1], None, None)
    calls = []
    decode = dataset_module.decode_frames
    monkeypatch.setattr(
        dataset_module, "decode_frames", lambda path, idx, **kw: calls.append(path) or decode(path, idx, **kw)
    )
    kw = dict(split="train" if train else "test", train=train, **_kw(batch_size=4, stride=2))
    if train:
        kw.update(samples_per_video=4, group_by_video=True, jitter_s=0.5)
    per_item = _batches(build_dataloader(index, decode_once=False, **kw), grouped=False, epochs=(0, 1))
    n_items = len(calls)
    calls.clear()
    grouped = _batches(build_dataloader(index, **kw), grouped=True, epochs=(0, 1))
    _assert_same_batches(grouped, per_item)
    videos_per_batch = [len(set(b["video_id"])) for b in grouped]
    assert n_items == sum(len(b["video_id"]) for b in grouped)
    assert len(calls) == sum(videos_per_batch) < n_items  # one decode per video of a batch


def test_a_broken_video_in_a_grouped_batch_is_logged_as_one_by_one(cap_index, tmp_path):
    import shutil

    _, test, root = cap_index
    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    (broken / "v0.mp4").write_bytes(b"")  # 5 evaluated captions: batches of 4 hold several of its items
    entries, batches = {}, {}
    for grouped in (True, False):
        dl = build_dataloader(
            test,
            root=broken,
            split="test",
            train=False,
            decode_once=grouped,
            max_failures=1,
            failure_log_dir=tmp_path / f"log_{grouped}",
            **_kw(batch_size=4, stride=2),
        )
        batches[grouped] = _batches(dl, grouped)
        entries[grouped] = [(e["sample_idx"], e["skipped"]) for e in dl.dataset.failures.entries()]
    _assert_same_batches(batches[True], batches[False])
    assert entries[True] == entries[False]
    assert [s for _, s in entries[True]].count(False) == 1  # opened once
