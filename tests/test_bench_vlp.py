"""scripts/bench_vlp.py's reading of the runs (turbo_ds.compare.time_to_quality): time to reach dense's
final quality, and the ratios."""

import json

from turbo_ds.compare.time_to_quality import read_row, table, time_to_reach, time_to_target


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
    summary = time_to_target(rows, ["test/align_r1"], margin=2.0)
    assert summary["targets"]["test/align_r1"] == 98.0
    assert summary["speedup_vs_drop0.5"]["test/align_r1"] == 6.0
    assert summary["speedup_vs_dense"]["test/align_r1"] == 9.0
    text = table(rows, summary, 2.0, "30 steps each")
    assert text.startswith("30 steps each. Targets: dense's final value minus 2.0: test/align_r1 98.00.")
    assert "| drop0.75 | 0.75 |" in text and "x6.00 faster" in text


def test_a_setting_that_never_reaches_the_target():
    rows = [_row("dense", 0.0, [(30, 50.0), (60, 100.0)]), _row("drop0.75", 0.75, [(10, 40.0), (20, 60.0)])]
    summary = time_to_target(rows, ["test/align_r1"], margin=2.0)
    assert summary["speedup_vs_dense"]["test/align_r1"] is None
    assert "not reached" in table(rows, summary, 2.0, "20 steps each")


def test_a_row_is_read_from_the_run_folder(tmp_path):
    final = {"train/time_s": 12.0, "train/avg_clips_per_s": 3.5, "test/align_r1": 40.0, "val/loss": 1.0}
    (tmp_path / "final_metrics.json").write_text(json.dumps(final))
    evals = [{"step": 5, "train/time_s": 6.0, "test/align_r1": 30.0, "val/loss": 2.0}]
    (tmp_path / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    row = read_row("dense", 0.0, tmp_path, steps=10, wall_s=20.0)
    assert row == {
        "setting": "dense",
        "drop_ratio": 0.0,
        "steps": 10,
        "wall_s": 20.0,
        "train_s": 12.0,
        "clips_per_s": 3.5,
        "tokens_per_s": None,
        "final": {"test/align_r1": 40.0},
        "curve": [{"step": 5, "train_s": 6.0, "test/align_r1": 30.0}],
    }
