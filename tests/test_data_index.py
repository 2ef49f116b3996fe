"""Index builders for every annotation format, the errors table, and the data_index CLI."""

import json

import av
import pyarrow.parquet as pq
import pytest
from video_utils import write_test_video

from data_index.builders import build
from data_index.cli import main
from turbo_ds.data.schema import SCHEMA_VERSION, VideoIndex, index_metadata, read_errors


def _rows(path):
    return {r["video_id"]: r for r in pq.read_table(path).to_pylist()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("videos")
    for rel, n in [
        ("a/clip1.mp4", 20),
        ("a/clip2.mp4", 12),
        ("train/abseiling/yt1_000010_000020.mp4", 10),
        ("train/zumba/yt2_000003_000013.mp4", 10),
        ("ssv2/101.mp4", 10),
        ("ssv2/102.mp4", 10),
        ("how/vidA.mp4", 40),
        ("P03/cam01/P03_cereals.mp4", 30),
        ("P16/webcam01/P16_coffee.mp4", 20),
        ("coin/cA.mp4", 30),
    ]:
        write_test_video(r / rel, n=n, fps=10)
    (r / "a" / "zero.mp4").write_bytes(b"")
    (r / "a" / "junk.mp4").write_text("junk")
    return r


def test_csv_and_errors_table(root, tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text(
        "path,label,split\n"
        "a/clip1.mp4,walk,train\na/clip2.mp4,run,val\na/zero.mp4,run,train\na/junk.mp4,walk,train\n"
        "a/missing.mp4,walk,train\n"
    )
    out = tmp_path / "idx.parquet"
    n, errors = build("csv", [ann], root, out, workers=2)
    rows = _rows(out)
    assert n == 2 and set(rows) == {"clip1", "clip2"}
    assert (rows["clip1"]["label"], rows["clip1"]["label_name"]) == (1, "walk")  # names sorted: run=0, walk=1
    assert rows["clip1"]["num_frames"] == 20 and rows["clip2"]["split"] == "val"
    assert (rows["clip1"]["width"], rows["clip1"]["height"], rows["clip1"]["fps"]) == (64, 32, 10.0)
    assert rows["clip1"]["duration_s"] == pytest.approx(2.0)
    reasons = {e["path"]: e["reason"] for e in read_errors(out)}
    assert set(reasons) == {"a/zero.mp4", "a/junk.mp4", "a/missing.mp4"}
    assert reasons["a/zero.mp4"].startswith("zero-byte") and reasons["a/missing.mp4"].startswith("missing")
    assert reasons["a/junk.mp4"].startswith("unreadable")
    assert index_metadata(out)["schema_version"] == SCHEMA_VERSION


def test_csv_integer_labels_and_header_check(root, tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label,label_name\na/clip1.mp4,7,seven\n")
    build("csv", [ann], root, tmp_path / "i.parquet", workers=1)
    assert _rows(tmp_path / "i.parquet")["clip1"]["label"] == 7
    ann.write_text("file,class\na/clip1.mp4,7\n")
    with pytest.raises(ValueError, match="path,label"):
        build("csv", [ann], root, tmp_path / "j.parquet", workers=1)


def test_kinetics(root, tmp_path):
    ann = tmp_path / "k.csv"
    ann.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,yt2,3,13,train\nabseiling,yt1,10,20,train\nzumba,yt3,0,10,validate\n"
    )
    out = tmp_path / "k.parquet"
    build("kinetics", [ann], root, out, workers=1)
    rows = _rows(out)
    assert rows["yt1_000010_000020"]["label"] == 0 and rows["yt2_000003_000013"]["label_name"] == "zumba"
    assert rows["yt2_000003_000013"]["path"] == "train/zumba/yt2_000003_000013.mp4"
    assert [e["video_id"] for e in read_errors(out)] == ["yt3_000000_000010"]


def test_ssv2(root, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"Pushing something from left to right": "0", "Dropping something": "1"}))
    ann = tmp_path / "something-something-v2-validation.json"
    ann.write_text(
        json.dumps(
            [
                {"id": "101", "template": "Dropping [something]", "label": "dropping a pen"},
                {"id": "102", "template": "Pushing [something] from left to right", "label": "pushing a cup"},
            ]
        )
    )
    out = tmp_path / "s.parquet"
    build("ssv2", [ann], root, out, workers=1, labels=str(labels))
    rows = _rows(out)
    assert rows["101"]["label"] == 1 and rows["102"]["label"] == 0 and rows["101"]["split"] == "val"
    with pytest.raises(ValueError, match="--labels"):
        build("ssv2", [ann], root, out, workers=1)


def test_howto100m_json_and_csv(root, tmp_path):
    cj = tmp_path / "caption.json"
    cj.write_text(json.dumps({"vidA": {"start": [2.0, 0.5], "end": [3.5, 1.5], "text": ["second", "first"]}}))
    out = tmp_path / "h.parquet"
    build("howto100m", [cj], root, out, workers=1)
    row = _rows(out)["vidA"]
    assert [c["text"] for c in row["captions"]] == ["first", "second"]  # sorted by start
    assert row["captions"][0]["start_s"] == pytest.approx(0.5) and row["label"] == -1
    cc = tmp_path / "c.csv"
    cc.write_text("video_id,start,end,text,split\nvidA,0.0,1.0,hello there,val\n")
    build("howto100m", [cc], root, out, workers=1)
    row = _rows(out)["vidA"]
    assert row["split"] == "val" and row["captions"][0]["text"] == "hello there"


def test_breakfast_segment_and_frame_label_files(root, tmp_path):
    gt = tmp_path / "groundTruth"
    gt.mkdir()
    (gt / "P03_cam01_P03_cereals.txt").write_text("SIL\n" * 5 + "pour_cereals\n" * 15 + "SIL\n" * 10)
    (gt / "P16_webcam01_P16_coffee.txt").write_text("1-8 SIL\n9-20 pour_coffee\n")
    out = tmp_path / "b.parquet"
    build("breakfast", [gt], root, out, workers=1)
    rows = _rows(out)
    cer, cof = rows["P03_cam01_P03_cereals"], rows["P16_webcam01_P16_coffee"]
    assert cer["path"] == "P03/cam01/P03_cereals.mp4" and cer["split"] == "val" and cof["split"] == "train"
    assert (cer["label_name"], cof["label_name"]) == ("cereals", "coffee") and cer["label"] != cof["label"]
    segs = [(s["start_s"], s["end_s"], s["label"]) for s in cer["segments"]]
    sil = segs[0][2]
    assert segs == [(0.0, 0.5, sil), (0.5, 2.0, segs[1][2]), (2.0, 3.0, sil)] and segs[1][2] != sil
    assert [c["text"] for c in cer["captions"]] == ["SIL", "pour_cereals", "SIL"]
    bounds = [t for seg in cof["segments"] for t in (seg["start_s"], seg["end_s"])]
    assert bounds == pytest.approx([0.0, 0.8, 0.8, 2.0])  # "1-8" = frames 0..7 at 10 fps


def test_coin(root, tmp_path):
    ann = tmp_path / "COIN.json"
    ann.write_text(
        json.dumps(
            {
                "database": {
                    "cA": {
                        "recipe_type": 5,
                        "class": "MakeTea",
                        "subset": "testing",
                        "annotation": [
                            {"id": "12", "segment": [1.5, 2.5], "label": "pour water"},
                            {"id": "11", "segment": [0.0, 1.0], "label": "boil water"},
                        ],
                    },
                    "gone": {"recipe_type": 1, "class": "X", "subset": "training", "annotation": []},
                }
            }
        )
    )
    out = tmp_path / "c.parquet"
    build("coin", [ann], root, out, workers=1)
    row = _rows(out)["cA"]
    assert (row["label"], row["label_name"], row["split"]) == (5, "MakeTea", "val")
    assert [s["label"] for s in row["segments"]] == [11, 12]
    assert [c["text"] for c in row["captions"]] == ["boil water", "pour water"]
    assert [e["video_id"] for e in read_errors(out)] == ["gone"]


def test_cli_build_validate_stats(root, tmp_path, capsys):
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\na/clip1.mp4,0\na/clip2.mp4,1\n")
    out = tmp_path / "idx.parquet"
    assert (
        main(
            [
                "build",
                "--format",
                "csv",
                "--annotations",
                str(ann),
                "--root",
                str(root),
                "--out",
                str(out),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert main(["validate", str(out), "--root", str(root), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["videos"] == 2 and stats["classes"] == 2 and stats["frames"]["max"] == 20
    # a video that changed since the build is caught
    moved = tmp_path / "root2"
    (moved / "a").mkdir(parents=True)
    write_test_video(moved / "a" / "clip1.mp4", n=15)
    assert (
        main(
            [
                "validate",
                str(out),
                "--root",
                str(moved),
                "--workers",
                "1",
                "--errors-out",
                str(tmp_path / "problems.parquet"),
            ]
        )
        == 1
    )
    problems = {e["path"]: e["reason"] for e in read_errors(tmp_path / "problems.parquet")}
    assert "frame count 20 in index, 15 decode" in problems["a/clip1.mp4"]
    assert problems["a/clip2.mp4"].startswith("missing")


def test_cli_transcode(root, tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\na/clip1.mp4,0\n")
    out = tmp_path / "idx.parquet"
    build("csv", [ann], root, out, workers=1)
    assert (
        main(
            [
                "transcode",
                str(out),
                "--root",
                str(root),
                "--out-root",
                str(tmp_path / "t"),
                "--short-side",
                "16",
                "--gop",
                "4",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    new = VideoIndex(tmp_path / "t" / "idx.parquet", root=tmp_path / "t")
    row = new[0]
    assert (row["width"], row["height"], row["num_frames"]) == (32, 16, 20)
    with av.open(row["abs_path"]) as c:
        keys = [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size]
    assert sum(keys) == 5  # a keyframe every 4 frames


def test_cli_transcode_resumes_and_refuses_other_options(root, tmp_path, capsys):
    """A rerun keeps the outputs an earlier (interrupted) run finished, encodes the rest, and writes the
    same index; an output folder holding another setting is one error line (exit 2)."""
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\na/clip1.mp4,0\na/clip2.mp4,1\nssv2/101.mp4,1\n")
    index = tmp_path / "idx.parquet"
    build("csv", [ann], root, index, workers=1)
    t = tmp_path / "t"
    args = [
        "transcode",
        str(index),
        "--root",
        str(root),
        "--out-root",
        str(t),
        "--short-side",
        "16",
        "--gop",
        "4",
    ]
    assert main([*args, "--workers", "2"]) == 0
    assert "3 videos under" in (out := capsys.readouterr().out) and "(3 encoded, 0 kept" in out
    first = pq.read_table(t / "idx.parquet").to_pylist()
    kept = t / "a" / "clip1.mp4"
    (t / "ssv2" / "101.mp4").unlink()  # as if the first run had stopped before it
    (t / "ssv2" / "101.part.mp4").write_bytes(b"half a video")  # ... while writing it
    mtime = kept.stat().st_mtime_ns
    assert main([*args, "--workers", "1"]) == 0
    assert "(1 encoded, 2 kept from an earlier run); 0 errors" in capsys.readouterr().out
    assert kept.stat().st_mtime_ns == mtime and not (t / "ssv2" / "101.part.mp4").exists()
    assert pq.read_table(t / "idx.parquet").to_pylist() == first
    assert read_errors(t / "idx.parquet") == []
    assert main([*args[:-1], "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_index: error: ") and "holds a transcode with other options" in err
    assert "\n" not in err


def test_cli_demo_prints_layout(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--size", "tiny", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "actions.parquet" in text and "long.parquet" in text and str(tmp_path / "d") in text
    assert "vlp.parquet" in text and "vlp_align.parquet" in text
    idx = VideoIndex(tmp_path / "d" / "actions.parquet", split="val")
    assert len(idx) == 4 and read_errors(tmp_path / "d" / "actions.parquet") == []
