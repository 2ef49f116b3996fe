"""scripts/bench_vlp.py's reading of the runs: time to reach dense's final quality, and the ratios."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_vlp import table, time_to_reach  # noqa: E402


def _row(name, drop, points):
    curve = [{"step": 10 * (i + 1), "train_s": t, "test/align_r1": v} for i, (t, v) in enumerate(points)]
    return {
        "setting": name,
        "drop_ratio": drop,
        "steps": 30,
        "wall_s": 1.0,
        "train_s": points[-1][0],
        "clips_per_s": 1.0,
        "final": {"test/align_r1": points[-1][1]},
        "curve": curve,
    }


def test_time_to_target_and_ratios():
    rows = [
        _row("dense", 0.0, [(30, 50.0), (60, 90.0), (90, 100.0)]),  # target 98: reached at 90 s
        _row("drop0.5", 0.5, [(20, 60.0), (40, 97.0), (60, 98.5)]),  # at 60 s
        _row("drop0.75", 0.75, [(10, 98.0), (20, 99.0), (30, 99.5)]),  # at 10 s (>= target counts)
    ]
    assert time_to_reach(rows[0], "test/align_r1", 98.0) == 90
    assert time_to_reach(rows[0], "test/align_r1", 101.0) is None
    args = argparse.Namespace(
        metric="test/align_r1", margin=2.0, steps=30, eval_every=10, config="c", ds_config="d", num_gpus=2
    )
    text, summary = table(rows, args)
    assert summary["targets"]["test/align_r1"] == 98.0
    assert summary["speedup_vs_drop0.5"]["test/align_r1"] == 6.0
    assert summary["speedup_vs_dense"]["test/align_r1"] == 9.0
    assert "| drop0.75 | 0.75 |" in text and "x6.00 faster" in text


def test_a_setting_that_never_reaches_the_target():
    rows = [_row("dense", 0.0, [(30, 50.0), (60, 100.0)]), _row("drop0.75", 0.75, [(10, 40.0), (20, 60.0)])]
    args = argparse.Namespace(
        metric="test/align_r1", margin=2.0, steps=20, eval_every=10, config="c", ds_config="d", num_gpus=2
    )
    text, summary = table(rows, args)
    assert summary["speedup_vs_dense"]["test/align_r1"] is None and "not reached" in text
