"""The streaming index build at scale: bad annotations reported, resume, shards + merge, the Arrow
cache written once per machine, vectorised caption pairs (issue 17)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from video_utils import write_test_video

from data_index import builders
from data_index.bench import write_howto100m_inputs
from data_index.builders import build
from data_index.cli import main
from data_index.merge import merge
from data_index.parsers import DataIndexError
from turbo_ds.data.dataset import VideoDataset
from turbo_ds.data.sampling import FrameSampler
from turbo_ds.data.schema import IndexWriter, VideoIndex, index_metadata, read_errors
from turbo_ds.data.transforms import ClipTransform


@pytest.fixture(scope="module")
def howto(tmp_path_factory):
    """17 HowTo100M-shaped videos (symlinks to one clip), 3 captions each; 2 listed but absent."""
    folder = tmp_path_factory.mktemp("howto")
    ann, root = write_howto100m_inputs(folder, 17, captions=3)
    for vid in ("v0000004", "v0000011"):
        (root / "0000" / f"{vid}.mp4").unlink()
    return ann, root


def _table(path):
    return pq.read_table(path).to_pylist()


_PROBE = builders._probe


def _counting_probe(monkeypatch, fail_after=None):
    """Count the probes of in-process builds (workers=1); raise (a 'kill') after ``fail_after``."""
    calls = []

    def probe(job):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("killed")
        calls.append(job[0])
        return _PROBE(job)

    monkeypatch.setattr(builders, "_probe", probe)
    return calls


def test_howto100m_bad_entries_are_reported_and_the_build_goes_on(tmp_path):
    root = tmp_path / "videos"
    for vid in ("good", "nocap", "ragged", "badcap"):
        write_test_video(root / f"{vid}.mp4", n=20, fps=10)
    ann = tmp_path / "caption.json"
    ann.write_text(
        json.dumps(
            {
                "good": {"start": [1.0, 0.0], "end": [2.0, 1.0], "text": ["b", "a"]},
                "nocap": {"start": [0.0], "end": [1.0]},  # json.load + c["text"]: KeyError before
                "ragged": {"start": [0.0, 1.0], "end": [1.0], "text": ["x", "y"]},  # zip(strict): ValueError
                "badcap": {"start": [0.0, "soon", 2.0], "end": [1.0, 2.0, 3.0], "text": ["p", "q", None]},
            }
        )
    )
    out = tmp_path / "h.parquet"
    assert build("howto100m", [ann], root, out, workers=1) == (2, 4)
    rows = {r["video_id"]: r for r in _table(out)}
    assert [c["text"] for c in rows["good"]["captions"]] == ["a", "b"]
    assert [c["text"] for c in rows["badcap"]["captions"]] == ["p"]  # caption 1 and 2 dropped
    errors = [(e["video_id"], e["path"], e["stage"], e["reason"]) for e in read_errors(out)]
    assert [e[:3] for e in errors] == [
        ("nocap", None, "annotations"),
        ("ragged", None, "annotations"),
        ("badcap", "badcap.mp4", "annotations"),
        ("badcap", "badcap.mp4", "annotations"),
    ]
    assert errors[0][3] == f"{ann} (video nocap): no 'text' list: video dropped"
    assert "lists of different lengths (start 2, end 1, text 2)" in errors[1][3]
    assert errors[2][3] == f"{ann} (video badcap) caption 1: start 'soon' is not a number: dropped"
    assert errors[3][3].endswith("caption 2: text None is not a string: dropped")


def test_howto100m_csv_bad_rows_and_ungrouped_rows(tmp_path):
    root = tmp_path / "videos"
    for vid in ("a", "b"):
        write_test_video(root / f"{vid}.mp4", n=20, fps=10)
    ann = tmp_path / "c.csv"
    ann.write_text("video_id,start,end,text\na,0,1,one\nb,0,1,bee\na,x,2,bad\na,1,2,two\n")
    out = tmp_path / "c.parquet"
    assert build("howto100m", [ann], root, out, workers=1) == (2, 1)
    rows = {r["video_id"]: r for r in _table(out)}
    assert [c["text"] for c in rows["a"]["captions"]] == ["one", "two"]  # rows of a regrouped
    assert read_errors(out)[0]["reason"] == f"{ann} line 4: start 'x' is not a number: dropped"


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        (
            "howto100m",
            '{"a": {"start": [0.0], "end": [1.0], "text": ["x"]}, "b": {"start": [0',
            "after entry 0 ('a')",
        ),
        ("htm_align", '[["a", 0, 1, "x"]]', "expected a JSON object, found '['"),
        ("coin", '{"videos": {}}', 'no videos under "database"'),
    ],
)
def test_unparseable_file_is_one_error_line_exit_2(tmp_path, capsys, fmt, content, message):
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    out = tmp_path / "i.parquet"
    argv = ["build", "--format", fmt, "--annotations", str(ann), "--root", str(tmp_path), "--out", str(out)]
    assert main([*argv, "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"data_index: error: {ann}: ") and message in err and "\n" not in err
    assert "Traceback" not in err and not out.exists()


def test_truncated_file_fails_before_any_probe(howto, tmp_path, monkeypatch):
    ann, root = howto
    cut = tmp_path / "caption.json"
    cut.write_bytes(ann.read_bytes()[: ann.stat().st_size * 3 // 4])
    calls = _counting_probe(monkeypatch)
    with pytest.raises(DataIndexError, match=r"invalid JSON after entry 11 \('v0000011'\), before byte \d+"):
        build("howto100m", [cut], root, tmp_path / "i.parquet", workers=1)
    assert calls == []


def test_streamed_in_chunks_one_row_group_each(howto, tmp_path):
    ann, root = howto
    out = tmp_path / "i.parquet"
    assert build("howto100m", [ann], root, out, workers=2, chunk_size=4) == (15, 2)
    assert [r["video_id"] for r in _table(out)] == [f"v{i:07d}" for i in range(17) if i not in (4, 11)]
    assert pq.ParquetFile(out).metadata.num_row_groups == 5  # ceil(17 / 4) chunks, none empty
    assert [(e["video_id"], e["stage"]) for e in read_errors(out)] == [
        ("v0000004", "probe"),
        ("v0000011", "probe"),
    ]
    assert not (tmp_path / "i.parquet.work").exists()  # removed once the index is written
    assert index_metadata(out)["info"] == {"root": str(root), "format": "howto100m"}


def test_killed_build_resumes_without_probing_again(howto, tmp_path, monkeypatch):
    ann, root = howto
    whole = tmp_path / "whole.parquet"
    build("howto100m", [ann], root, whole, workers=1, chunk_size=4)
    out = tmp_path / "i.parquet"
    _counting_probe(monkeypatch, fail_after=9)  # killed in chunk 2 (entries 8-11)
    with pytest.raises(KeyboardInterrupt):
        build("howto100m", [ann], root, out, workers=1, chunk_size=4)
    work = tmp_path / "i.parquet.work"
    progress = json.loads((work / "progress.json").read_text())
    assert progress["chunks_done"] == 2 and progress["entries"] == 17 and not out.exists()
    assert sorted(p.name for p in work.glob("chunk-*")) == [
        "chunk-0000000.errors.parquet",
        "chunk-0000000.parquet",
        "chunk-0000001.errors.parquet",
        "chunk-0000001.parquet",
    ]
    # another build's inputs never resume from it
    other = tmp_path / "other.json"
    other.write_text(ann.read_text().replace("cup", "mug"))
    with pytest.raises(DataIndexError, match="unfinished build with another annotations"):
        build("howto100m", [other], root, out, workers=1, chunk_size=4)
    calls = _counting_probe(monkeypatch)
    assert build("howto100m", [ann], root, out, workers=1, chunk_size=4) == (15, 2)
    assert len(calls) == 17 - 8  # chunks 2-4 only
    assert _table(out) == _table(whole) and read_errors(out) == read_errors(whole)
    assert not work.exists()


def test_shards_merge_into_the_single_build(howto, tmp_path, capsys):
    ann, root = howto
    whole = tmp_path / "whole.parquet"
    build("howto100m", [ann], root, whole, workers=1, chunk_size=2)
    parts = []
    for i in (2, 0, 1):  # any order, any machine
        part = tmp_path / f"part{i}.parquet"
        argv = [
            "build",
            "--format",
            "howto100m",
            "--annotations",
            str(ann),
            "--root",
            str(root),
            "--out",
            str(part),
        ]
        assert main([*argv, "--workers", "1", "--chunk-size", "2", "--shard", f"{i}/3"]) == 0
        parts.append(part)
    assert "part 2/3" in capsys.readouterr().out
    assert len(VideoIndex(parts[0], root=root)) > 0  # a part is an index too
    out = tmp_path / "merged.parquet"
    assert main(["merge", *map(str, parts), "--out", str(out)]) == 0
    assert _table(out) == _table(whole)
    assert read_errors(out) == read_errors(whole) and len(read_errors(out)) == 2
    assert index_metadata(out) == index_metadata(whole)
    capsys.readouterr()
    # validated: a missing shard, a shard twice, parts of another build
    with pytest.raises(DataIndexError, match="shard.* 1/3 missing"):
        merge([parts[0], parts[1]], out)
    with pytest.raises(DataIndexError, match="both shard 2/3"):
        merge([parts[0], parts[0], parts[1]], out)
    other = tmp_path / "other.parquet"
    argv = [
        "build",
        "--format",
        "howto100m",
        "--annotations",
        str(ann),
        "--root",
        str(root),
        "--out",
        str(other),
    ]
    assert main([*argv, "--workers", "1", "--chunk-size", "3", "--shard", "1/3"]) == 0
    with pytest.raises(DataIndexError, match=r"different builds \(chunk_size\)"):
        merge([parts[0], other, parts[2]], out)
    assert main(["merge", str(whole), "--out", str(out)]) == 2
    assert "not a shard part" in capsys.readouterr().err


_OPEN = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from turbo_ds.data.schema import VideoIndex
while time.time() < float(sys.argv[2]):
    time.sleep(0.005)
idx = VideoIndex(sys.argv[1])
print(json.dumps({"inode": os.stat(idx._arrow_path).st_ino, "rows": idx.table.column("video_id").to_pylist()}))
"""


@pytest.mark.slow
def test_four_processes_opening_a_new_index_write_the_cache_once(tmp_path):
    rows = [
        {"video_id": f"v{i}", "path": f"v{i}.mp4", "split": "train", "num_frames": 10, "fps": 10.0}
        for i in range(5000)
    ]
    with IndexWriter(tmp_path / "i.parquet") as w:
        for start in range(0, 5000, 1000):
            w.write(rows[start : start + 1000])
    env = {**os.environ, "TURBO_DS_INDEX_CACHE": str(tmp_path / "cache")}
    go = str(time.time() + 3)  # the four start opening together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN, str(tmp_path / "i.parquet"), go],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].strip().splitlines() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    wrote = [line for out in outs for line in out if line.startswith("wrote the Arrow copy")]
    assert len(wrote) == 1  # one writer; the others waited on the lock and mapped its file
    results = [json.loads(out[-1]) for out in outs]
    assert len({r["inode"] for r in results}) == 1
    assert all(r["rows"] == [f"v{i}" for i in range(5000)] for r in results)
    assert [p.name for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name] == []


def test_split_and_caption_pairs_are_vectorised_and_exact(tmp_path):
    """Captions spread over several row groups (mapped chunks), null lists, 1.0-style missing flags."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        n = int(rng.integers(0, 4))
        caps = [
            {
                "start_s": j,
                "end_s": j + 1.0,
                "text": f"{i}.{j}",
                "alignable": [True, False, None][(i + j) % 3],
            }
            for j in range(n)
        ]
        rows.append(
            {
                "video_id": f"v{i}",
                "path": f"v{i}.mp4",
                "split": ["train", "val"][i % 2],
                "num_frames": 10,
                "fps": 10.0,
                "captions": caps if n or i % 4 else None,
            }
        )
    with IndexWriter(tmp_path / "i.parquet") as w:
        for start in range(0, 60, 7):
            w.write(rows[start : start + 7])
    for only_alignable in (True, False):
        index = VideoIndex(tmp_path / "i.parquet", split="val")
        assert index.rows.tolist() == list(range(1, 60, 2))
        ds = VideoDataset(
            index,
            FrameSampler("caption", num_frames=2),
            ClipTransform(16, train=False),
            train=False,
            only_alignable=only_alignable,
        )
        expected = [
            (pos, j)
            for pos, r in enumerate(rows[1::2])
            for j, c in enumerate(r["captions"] or [])
            if not (only_alignable and c["alignable"] is False)
        ]
        assert [tuple(p) for p in ds._pairs.tolist()] == expected


@pytest.mark.slow
def test_sigkilled_build_resumes_at_once(tmp_path, monkeypatch):
    """A real kill -9 mid-build (2 probe workers): the next run resumes at once (the work folder's
    lock died with the build, its orphaned workers too) and probes only what was not finished."""
    ann, root = write_howto100m_inputs(tmp_path / "in", 300, captions=2)
    out, work = tmp_path / "i.parquet", tmp_path / "i.parquet.work"
    argv = [
        "build",
        "--format",
        "howto100m",
        "--annotations",
        str(ann),
        "--root",
        str(root),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_index", *argv, "--workers", "2", "--chunk-size", "16"], env=env
    )
    deadline = time.time() + 60
    while not (work / "chunk-0000000.parquet").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    done = len(list(work.glob("chunk-*[0-9].parquet")))
    assert 1 <= done < 19 and not out.exists()
    calls = _counting_probe(monkeypatch)
    assert build("howto100m", [ann], root, out, workers=1, chunk_size=16) == (300, 0)
    assert len(calls) == 300 - 16 * done
    assert [r["video_id"] for r in _table(out)] == [f"v{i:07d}" for i in range(300)]
