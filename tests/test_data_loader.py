"""Dataset + sharded sampler + DataLoader on the tiny demo set, for every decoder backend."""

import pickle
import shutil

import numpy as np
import pytest
import torch
from video_utils import BACKEND_PARAMS, BACKENDS, tiny_demo  # noqa: F401

from data_index.demo import generate_demo
from turbo_ds.config import ConfigError
from turbo_ds.data import ShardedSampler, TooManyFailuresError, build_dataloader, write_index
from turbo_ds.data.backends.choice import resolve
from turbo_ds.data.schema import VideoIndex


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_action_items(tiny_demo, backend):  # noqa: F811
    dl = build_dataloader(
        tiny_demo / "actions.parquet",
        split="train",
        num_frames=8,
        stride=2,
        img_size=32,
        batch_size=4,
        num_workers=0,
        backend=backend,
    )
    assert dl.dataset.backend == dl.decoder.backend == backend  # workers get the name, never probe
    batch = next(iter(dl))
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and set(batch["label"].tolist()) <= {0, 1, 2, 3}
    assert len(batch["video_id"]) == 4 and all(v.startswith("act_train_") for v in batch["video_id"])
    assert -3 < batch["video"].mean() < 3 and batch["video"].std() > 0.1  # normalised, not blank
    rows = VideoIndex(tiny_demo / "actions.parquet", split="train")
    for vid, i, lab in zip(
        batch["video_id"], batch["sample_idx"].tolist(), batch["label"].tolist(), strict=True
    ):
        assert rows[i]["video_id"] == vid and rows[i]["label"] == lab


def test_backends_give_same_eval_clips(tiny_demo):  # noqa: F811
    clips = {}
    for backend in BACKENDS:
        dl = build_dataloader(
            tiny_demo / "actions.parquet",
            split="val",
            train=False,
            num_frames=8,
            stride=2,
            img_size=32,
            batch_size=4,
            num_workers=0,
            backend=backend,
        )
        clips[backend] = next(iter(dl))["video"]
    for backend in BACKENDS:
        assert (clips[backend] - clips["pyav"]).abs().mean() < 0.05, backend


def test_auto_backend_resolved_once_at_build(tiny_demo):  # noqa: F811
    dl = build_dataloader(tiny_demo / "actions.parquet", split="val", train=False, num_workers=0)
    assert dl.decoder == resolve("auto") and dl.dataset.backend == BACKENDS[0]
    assert dl.decoder.line().startswith(f"data: decoder backend {BACKENDS[0]} (auto: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_decoding_is_refused_before_training_without_a_gpu(tiny_demo):  # noqa: F811
    with pytest.raises(ConfigError, match="decode_device=cuda: torch sees no CUDA GPU"):
        build_dataloader(tiny_demo / "actions.parquet", split="val", decode_device="cuda", num_workers=0)


def test_caption_and_long_items(tiny_demo):  # noqa: F811
    cap = build_dataloader(
        tiny_demo / "captions.parquet",
        split="train",
        sampler="caption",
        num_frames=4,
        stride=None,
        img_size=32,
        batch_size=2,
        num_workers=0,
    )
    b = next(iter(cap))
    assert b["video"].shape == (2, 3, 4, 32, 32) and all(isinstance(t, str) and len(t) > 5 for t in b["text"])
    long = build_dataloader(
        tiny_demo / "long.parquet",
        split="val",
        sampler="uniform",
        num_frames=16,
        stride=None,
        img_size=32,
        train=False,
        batch_size=2,
        num_workers=0,
    )
    b = next(iter(long))
    assert b["video"].shape == (2, 3, 16, 32, 32)
    for segs, texts, times in zip(b["segments"], b["segment_text"], b["frame_times"], strict=True):
        assert segs.shape == (4, 3) and len(texts) == 4
        assert torch.all(segs[1:, 0] >= segs[:-1, 0]) and set(segs[:, 2].long().tolist()) == {0, 1, 2, 3}
        assert torch.all(times[1:] >= times[:-1]) and times[-1] <= segs[-1, 1]


def test_multiview_items(tiny_demo):  # noqa: F811
    dl = build_dataloader(
        tiny_demo / "actions.parquet",
        split="val",
        sampler="multiview",
        num_frames=4,
        stride=2,
        num_clips=2,
        num_crops=3,
        img_size=24,
        train=False,
        batch_size=2,
        num_workers=0,
    )
    assert next(iter(dl))["video"].shape == (2, 6, 3, 4, 24, 24)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shares_disjoint_and_cover(world_size, drop_last):
    n = 103
    for epoch in (0, 1):
        shares = []
        for rank in range(world_size):
            s = ShardedSampler(n, rank=rank, world_size=world_size, seed=7, drop_last=drop_last)
            s.set_epoch(epoch)
            got = [i for i, e in s]
            assert len(got) == len(s) and all(e == epoch for _, e in s)
            shares.append(got)
        flat = [i for sh in shares for i in sh]
        assert len(flat) == len(set(flat))  # disjoint
        if drop_last:
            assert len({len(sh) for sh in shares}) == 1 and len(flat) == n - n % world_size
        else:
            assert sorted(flat) == list(range(n))  # exact cover
    a, b = ShardedSampler(n, seed=7), ShardedSampler(n, seed=7)
    b.set_epoch(1)
    assert [i for i, _ in a] == [i for i, _ in ShardedSampler(n, seed=7)]  # deterministic
    assert [i for i, _ in a] != [i for i, _ in b]  # reshuffled per epoch


def test_resume_mid_epoch_yields_exactly_the_rest(tiny_demo):  # noqa: F811
    kw = dict(
        split="train",
        num_frames=4,
        stride=1,
        img_size=16,
        batch_size=2,
        num_workers=2,
        seed=3,
        rank=1,
        world_size=2,
    )
    ref = build_dataloader(tiny_demo / "actions.parquet", **kw)
    ref.set_epoch(5)
    full = [i for b in ref for i in b["sample_idx"].tolist()]
    assert len(full) == 4
    dl = build_dataloader(tiny_demo / "actions.parquet", **kw)
    dl.set_epoch(5)
    it = iter(dl)
    first = next(it)["sample_idx"].tolist()  # workers have prefetched more than this
    state = dl.state_dict()
    assert state["epoch"] == 5 and state["position"] == 2
    del it
    resumed = build_dataloader(tiny_demo / "actions.parquet", **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(5)  # the trainer's loop calls this; it must not reset the resume position
    rest = [i for b in resumed for i in b["sample_idx"].tolist()]
    assert first + rest == full
    assert resumed.state_dict()["position"] == 4
    resumed.set_epoch(6)
    assert len([i for b in resumed for i in b["sample_idx"].tolist()]) == 4


def test_resume_state_mismatch_is_an_error():
    s = ShardedSampler(10, seed=1)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({"epoch": 0, "position": 3, "seed": 2, "num_samples": 10, "world_size": 1})


@pytest.fixture()
def broken_demo(tiny_demo, tmp_path):  # noqa: F811
    """A copy of the tiny demo's actions whose index lists 3 videos that are now broken."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo / "videos" / "actions", root / "videos" / "actions")
    shutil.copy(tiny_demo / "actions.parquet", root / "actions.parquet")
    val = sorted((root / "videos" / "actions" / "val").glob("*.mp4"))
    val[0].write_bytes(b"")
    val[1].write_text("not a video")
    val[2].unlink()
    return root, {str(val[0]): "zero-byte", str(val[1]): "unreadable", str(val[2]): "missing"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_broken_videos_replaced_and_reported(broken_demo, num_workers, tmp_path):
    root, broken = broken_demo
    runs = []
    for r in range(2):
        dl = build_dataloader(
            root / "actions.parquet",
            split="val",
            train=False,
            num_frames=4,
            stride=1,
            img_size=16,
            batch_size=2,
            num_workers=num_workers,
            max_failures=3,
            failure_log_dir=tmp_path / f"log{r}",
        )
        ids = [v for b in dl for v in b["video_id"]]
        runs.append(ids)
        assert len(ids) == 4  # every sample delivered
        report = dl.failure_summary()
        assert report["videos"] == broken  # path + reason of each broken video
    assert runs[0] == runs[1]  # replacements are deterministic
    assert all(v == runs[0][3] for v in runs[0])  # the one good video replaces the 3 broken ones


def test_failure_cap_stops_with_clear_error(broken_demo, tmp_path):
    root, _ = broken_demo
    dl = build_dataloader(
        root / "actions.parquet",
        split="val",
        train=False,
        num_frames=4,
        stride=1,
        img_size=16,
        batch_size=4,
        num_workers=0,
        max_failures=1,
        failure_log_dir=tmp_path,
    )
    with pytest.raises(TooManyFailuresError, match="max_failures=1"):
        list(dl)


def test_workers_get_no_copy_of_the_index(tiny_demo, tmp_path):  # noqa: F811
    row = VideoIndex(tiny_demo / "actions.parquet")[0]
    row.pop("abs_path")
    rows = [{**row, "video_id": f"v{i}", "split": "train" if i % 5 else "val"} for i in range(20000)]
    write_index(rows, tmp_path / "big.parquet")
    dl = build_dataloader(
        tmp_path / "big.parquet",
        root=tiny_demo,
        split="train",
        num_frames=4,
        stride=1,
        img_size=16,
        batch_size=2,
        num_workers=0,
    )
    _ = dl.dataset.index[123]  # table now memory-mapped in this process
    size = len(pickle.dumps(dl.dataset))
    assert size < 16000 * 4 + 20000, size  # row positions (int32) only, not the table
    assert len(pickle.dumps(dl.dataset.index.table)) > 5 * size  # the table itself would be far bigger
    clone = pickle.loads(pickle.dumps(dl.dataset))
    assert clone.index[123]["video_id"] == dl.dataset.index[123]["video_id"]


@pytest.mark.slow
def test_demo_is_deterministic(tiny_demo, tmp_path):  # noqa: F811
    from turbo_ds.data.decode import decode_frames

    generate_demo(tmp_path / "again", seed=0, size="tiny", workers=2)
    generate_demo(tmp_path / "other", seed=1, size="tiny", workers=1)
    for name in ("actions", "captions", "long", "vlp", "vlp_align"):
        a = VideoIndex(tiny_demo / f"{name}.parquet").table.to_pylist()
        assert a == VideoIndex(tmp_path / "again" / f"{name}.parquet").table.to_pylist()
    rel = "videos/long/train/lon_train_00001.mp4"
    fa, _ = decode_frames(str(tiny_demo / rel), range(30))
    fb, _ = decode_frames(str(tmp_path / "again" / rel), range(30))
    fc, _ = decode_frames(str(tmp_path / "other" / rel), range(30))
    assert np.array_equal(fa, fb) and not np.array_equal(fa, fc)
    rel = "videos/vlp/align/vlp_align_00000.mp4"
    assert (tiny_demo / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes()


def test_index_path_may_be_a_folder(tiny_demo, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="actions.parquet"):
        VideoIndex(tiny_demo)  # three indexes there: ambiguous
    (tmp_path / "one").mkdir()
    shutil.copy(tiny_demo / "long.parquet", tmp_path / "one" / "long.parquet")
    assert len(VideoIndex(tmp_path / "one", root=tiny_demo, split="val")) == 2
    with pytest.raises(ValueError, match="splits present"):
        VideoIndex(tiny_demo / "long.parquet", split="test")


def test_loader_rank_shares_cover_the_split(tiny_demo):  # noqa: F811
    seen = []
    for rank in range(2):
        dl = build_dataloader(
            tiny_demo / "actions.parquet",
            split="train",
            num_frames=2,
            stride=1,
            img_size=16,
            batch_size=2,
            num_workers=0,
            rank=rank,
            world_size=2,
            seed=11,
        )
        dl.set_epoch(2)
        seen.append([i for b in dl for i in b["sample_idx"].tolist()])
    assert len(seen[0]) == len(seen[1]) == 4
    assert sorted(seen[0] + seen[1]) == list(range(8))


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [True, False])
def test_a_script_with_a_live_loader_exits_at_once(tiny_demo, persistent):  # noqa: F811
    """Workers ignore SIGTERM (a scheduler's signal is the rank's to handle), which is what
    multiprocessing sends its daemonic children at interpreter exit before joining them: a script that
    ends with its iterator alive hung forever."""
    import subprocess
    import sys
    import time

    script = (
        "import sys\n"
        "from turbo_ds.data import build_dataloader\n"
        "loader = build_dataloader(sys.argv[1], split='train', num_frames=4, stride=2, img_size=32,\n"
        f"    batch_size=2, num_workers=2, persistent_workers={persistent})\n"
        "it = iter(loader)\n"
        "print(tuple(next(it)['video'].shape), flush=True)\n"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tiny_demo / "actions.parquet")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(2, 3, 4, 32, 32)"
    assert time.monotonic() - start < 30  # it hung until the timeout before
