"""scripts/bench_align_memory.py end to end on a 3-second video: the long-video generator's index, one
fresh process per mode, the chunked and one-forward rows agreeing on the metric."""

import json
import subprocess

import pytest
from helpers import PY, ROOT

from turbo_ds.data.schema import VideoIndex

pytestmark = pytest.mark.slow  # every test here launches training processes


def test_long_align_set(tmp_path):
    from data_index.demo import generate_long_align

    (index,) = generate_long_align(tmp_path, [25], size=32).values()
    (row,) = VideoIndex(index, split="test").table.to_pylist()
    assert row["num_frames"] == 250 and row["fps"] == pytest.approx(10.0)
    assert [(c["start_s"], c["end_s"], c["alignable"]) for c in row["captions"]] == [
        (0.0, 10.0, True),
        (10.0, 20.0, True),
        (20.0, 25.0, True),
    ]


@pytest.mark.slow
def test_bench_align_memory_rows(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--seconds", "3", "--chunk-seconds", "2", "--img-size", "32", "--work", str(tmp_path)]
    proc = subprocess.run(
        [PY, "scripts/bench_align_memory.py", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    chunked, whole = json.loads(out.read_text())["rows"]
    assert (chunked["mode"], chunked["items"], whole["mode"], whole["items"]) == (
        "chunked",
        2,
        "one forward",
        1,
    )
    assert chunked["align_r1"] == whole["align_r1"]
    for r in (chunked, whole):
        assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0
