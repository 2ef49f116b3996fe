"""The htm_align builder (HTM-Align annotations), schema 1.1 (caption ``alignable``) and 1.0 indexes."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from video_utils import write_test_video

from data_index.builders import build
from data_index.cli import main
from turbo_ds.data import build_dataloader
from turbo_ds.data.schema import SCHEMA_VERSION, SEGMENT_TYPE, VideoIndex, index_metadata, read_errors

ANNOTATIONS = {
    "vA": [
        [1, 1.0, 2.0, "the second sentence"],
        [0, 0.2, 0.8, "not visible in the video"],
        [1, 3.0, 3.5, "starts after the end"],
        [1, 2.5, 4.0, "runs past the end"],
    ],
    "vB": [[1, 0.0, 1.0, "only one"]],
    "gone": [[1, 0.0, 1.0, "no such video"]],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("htm")
    write_test_video(r / "x" / "vA.mp4", n=30, fps=10)  # 3.0 s
    write_test_video(r / "y" / "vB.mp4", n=20, fps=10)
    return r


@pytest.fixture()
def ann(tmp_path):
    p = tmp_path / "htm_align.json"
    p.write_text(json.dumps(ANNOTATIONS))
    return p


def _rows(path):
    return {r["video_id"]: r for r in pq.read_table(path).to_pylist()}


def test_build_sorts_flags_and_reports(root, ann, tmp_path):
    out = tmp_path / "a.parquet"
    n, errors = build("htm_align", [ann], root, out, workers=1)
    assert n == 2 and errors == 2  # counts; the rows are in the errors table
    rows = _rows(out)
    a, b = rows["vA"], rows["vB"]
    assert (a["split"], a["label"], a["label_name"], a["path"]) == ("test", -1, None, "x/vA.mp4")
    assert [c["text"] for c in a["captions"]] == [
        "not visible in the video",
        "the second sentence",
        "runs past the end",  # starts inside the video: kept, end as annotated
    ]
    assert [c["alignable"] for c in a["captions"]] == [False, True, True]
    assert a["captions"][2]["end_s"] == pytest.approx(4.0)
    assert [(c["text"], c["alignable"]) for c in b["captions"]] == [("only one", True)]
    reported = {(e["video_id"], e["stage"]): e["reason"] for e in read_errors(out)}
    assert set(reported) == {("gone", "probe"), ("vA", "captions")}
    assert reported["gone", "probe"].startswith("missing")
    late = reported["vA", "captions"]
    assert "sentence 2" in late and "3.000-3.500" in late and "(3.000 s)" in late
    meta = index_metadata(out)
    assert meta["schema_version"] == SCHEMA_VERSION == "1.1" and meta["info"]["format"] == "htm_align"


def test_cli_build_with_split(root, ann, tmp_path, capsys):
    out = tmp_path / "b.parquet"
    argv = ["build", "--format", "htm_align", "--annotations", str(ann), "--root", str(root)]
    assert main([*argv, "--out", str(out), "--workers", "1", "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "2 videos; 2 errors" in text and "x/vA.mp4: sentence 2" in text and "gone.mp4: missing" in text
    assert {r["split"] for r in _rows(out).values()} == {"val"}
    assert len(VideoIndex(out, root=root, split="val")) == 2


def test_malformed_sentences_are_reported_and_the_build_goes_on(root, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(
        json.dumps(
            {
                "vA": [[1, 0.0, "no end"], [1, "soon", 1.0, "start not a number"], [1, 0.5, 1.0, "kept"]],
                "vB": "not a list",
            }
        )
    )
    n, errors = build("htm_align", [p], root, tmp_path / "c.parquet", workers=1)
    assert (n, errors) == (1, 3)
    assert [c["text"] for c in _rows(tmp_path / "c.parquet")["vA"]["captions"]] == ["kept"]
    reasons = [(e["video_id"], e["stage"], e["reason"]) for e in read_errors(tmp_path / "c.parquet")]
    assert [r[:2] for r in reasons] == [("vA", "annotations")] * 2 + [("vB", "annotations")]
    assert f"{p} (video vA) sentence 0: expected [alignable, start_s, end_s, text]" in reasons[0][2]
    assert "sentence 1: start_s 'soon' is not a number: dropped" in reasons[1][2]
    assert "not a list of sentences" in reasons[2][2] and "video dropped" in reasons[2][2]


OLD_CAPTION = pa.struct([("start_s", pa.float32()), ("end_s", pa.float32()), ("text", pa.string())])


def _write_old_index(path, root_rel, version="1.0"):
    """An index as schema 1.0 wrote it: captions without ``alignable``."""
    schema = pa.schema(
        [
            ("video_id", pa.string()),
            ("path", pa.string()),
            ("split", pa.string()),
            ("label", pa.int32()),
            ("label_name", pa.string()),
            ("num_frames", pa.int32()),
            ("fps", pa.float32()),
            ("duration_s", pa.float32()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("segments", pa.list_(SEGMENT_TYPE)),  # unchanged since 1.0
            ("captions", pa.list_(OLD_CAPTION)),
        ]
    )
    caps = [{"start_s": 0.0, "end_s": 1.0, "text": "first"}, {"start_s": 1.5, "end_s": 2.5, "text": "second"}]
    row = {
        "video_id": "vA",
        "path": root_rel,
        "split": "test",
        "label": -1,
        "label_name": None,
        "num_frames": 30,
        "fps": 10.0,
        "duration_s": 3.0,
        "width": 64,
        "height": 32,
        "segments": None,
        "captions": caps,
    }
    table = pa.Table.from_pylist([row], schema=schema)
    table = table.replace_schema_metadata({b"turbo_ds.schema_version": version.encode()})
    pq.write_table(table, path)


def test_schema_1_0_index_still_reads(root, tmp_path):
    old = tmp_path / "old.parquet"
    _write_old_index(old, "x/vA.mp4")
    row = VideoIndex(old, root=root)[0]
    assert [c["text"] for c in row["captions"]] == ["first", "second"]
    assert all(c.get("alignable") is None for c in row["captions"])
    kw = dict(root=root, split="test", train=False, num_frames=2, stride=1, img_size=16, num_workers=0)
    cap = build_dataloader(old, sampler="caption", batch_size=4, **kw)
    assert [t for b in cap for t in b["text"]] == ["first", "second"]  # unknown flag = alignable
    sec = next(iter(build_dataloader(old, sampler="per_second", **kw)))
    assert sec["alignable"].tolist() == [[True, True]] and sec["video"].shape[1] == 3
    newer = tmp_path / "v2.parquet"
    _write_old_index(newer, "x/vA.mp4", version="2.0")
    with pytest.raises(ValueError, match="rebuild"):
        VideoIndex(newer, root=root)
