"""Sweeps (``scripts/sweep.py``): grid values as YAML, folder names, every combination's config checked
before any run; the loop's statuses and exit statuses with a fake runner; end to end on the tiny demo
data: one MLflow experiment of tagged runs (the ``tiny_sweep`` fixture), a rerun that skips them, and a
sweep stopped by SIGTERM whose rerun resumes its run in the same MLflow run (with system metrics)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SWEEP_GRID, sweep_config
from helpers import LAUNCH_ENV_KEYS, ROOT, write_config

from turbo_ds.cli import run_cli
from turbo_ds.config import ConfigError, load_config
from turbo_ds.measure.launch import TRAIN_SCRIPT
from turbo_ds.sweep import cli, run, spec
from turbo_ds.sweep.grid import check_keys, combinations, parse_grid, slug, yaml_inline
from turbo_ds.sweep.launch import SweepSignals, runs_script

DS = str(ROOT / "ds_configs" / "zero0.json")
TINY_SLUGS = [f"token_dropout.drop_ratio={v}" for v in ("0", "0.75")]


@pytest.fixture
def no_launch_env(monkeypatch):
    for k in LAUNCH_ENV_KEYS:
        monkeypatch.delenv(k, raising=False)


def test_grid_values_are_yaml_and_the_first_key_varies_slowest():
    grid = parse_grid(
        [
            "token_dropout.drop_ratio=0,0.5",
            "pmae.enabled=true,false",
            "data.crop_scale=[0.35, 1.0],[0.5,1.0]",
            "token_dropout.strategy='random',tube",
        ]
    )
    assert grid == {
        "token_dropout.drop_ratio": [0, 0.5],
        "pmae.enabled": [True, False],
        "data.crop_scale": [[0.35, 1.0], [0.5, 1.0]],
        "token_dropout.strategy": ["random", "tube"],
    }
    assert combinations({"a": [1, 2], "b": [True, False]}) == [
        {"a": 1, "b": True},
        {"a": 1, "b": False},
        {"a": 2, "b": True},
        {"a": 2, "b": False},
    ]
    for value in (0, 0.5, True, None, "0.5", "1e-4", [0.35, 1.0], "a b: c"):
        assert yaml.safe_load(yaml_inline(value)) == value


@pytest.mark.parametrize(
    "items, message",
    [
        (["optim.lr=1,2", "optim.lr=3"], "--grid optim.lr is given twice; list all its values in one --grid"),
        (["optim.lr="], "--grid optim.lr has no values"),
        (["optim.lr"], "--grid 'optim.lr' must look like section.key=value1,value2"),
        (["optim.lr=[1,"], "--grid 'optim.lr=[1,': not a comma-separated list of YAML values"),
        (["optim.lr=1,2,1"], "--grid optim.lr lists 1 more than once"),
    ],
)
def test_bad_grid_is_a_clear_error(items, message):
    with pytest.raises(ConfigError) as e:
        parse_grid(items)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "grid, sets, message",
    [
        (
            ["optim.lr"],
            ["optim.lr"],
            "optim.lr is both varied (--grid) and fixed (--set optim.lr=...); drop one",
        ),
        (["optim.lr"], ["optim"], "optim.lr is both varied (--grid) and fixed (--set optim=...); drop one"),
        (["optim", "optim.lr"], [], "--grid optim and --grid optim.lr overlap; vary one of them"),
        (["output_dir"], [], "output_dir is set by the sweep for every run; use --out"),
        (
            [],
            ["tracking.experiment"],
            "tracking.experiment is set by the sweep for every run; use --experiment",
        ),
        (
            ["tracking.tags"],
            [],
            "tracking.tags cannot be varied; set fixed tags with --set tracking.tags={...}",
        ),
    ],
)
def test_keys_the_sweep_owns_or_given_twice_are_errors(grid, sets, message):
    with pytest.raises(ConfigError) as e:
        check_keys(dict.fromkeys(grid, [1]), sets)
    assert str(e.value).startswith(message)


def test_slugs_are_readable_filesystem_safe_and_distinct():
    assert slug({"token_dropout.drop_ratio": 0.75, "pmae.enabled": False}) == (
        "token_dropout.drop_ratio=0.75,pmae.enabled=false"
    )
    assert slug({"optim.lr": "1e-4"}) == "optim.lr=1e-4"  # a string as typed (YAML 1.1 reads 1e-4 so)
    odd = slug({"data.index": "/data/my videos/index.parquet"})
    assert re.fullmatch(r"data\.index=_data_my_videos_index\.parquet-[0-9a-f]{8}", odd)
    assert odd != slug({"data.index": "/data/my_videos/index.parquet"})


def test_plan_is_deterministic_and_gives_each_run_the_sweeps_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = write_config({"tracking": {"tags": {"owner": "me"}}}, tmp_path / "base.yaml")
    grid = ["token_dropout.drop_ratio=0,0.5", "pmae.enabled=true,false"]
    s = spec.build(cfg, DS, grid, ["optim.lr=1e-4"], out=tmp_path / "sweeps")
    again = spec.build(cfg, DS, grid, ["optim.lr=1e-4"], out=tmp_path / "sweeps")
    name = "base__token_dropout.drop_ratio+pmae.enabled"
    assert (s.name, s.experiment, s.sweep_id) == (name, name, again.sweep_id) and len(s.sweep_id) == 12
    folder = tmp_path.resolve() / "sweeps" / name
    assert s.tracking_uri == f"sqlite:///{folder}/mlflow.db"
    assert s.artifact_location == (folder / "mlartifacts").as_uri()
    assert [c.slug for c in s.combos] == [
        "token_dropout.drop_ratio=0,pmae.enabled=true",
        "token_dropout.drop_ratio=0,pmae.enabled=false",
        "token_dropout.drop_ratio=0.5,pmae.enabled=true",
        "token_dropout.drop_ratio=0.5,pmae.enabled=false",
    ]
    c = s.combos[2]
    run_cfg = load_config(cfg, s.run_overrides(c))  # what scripts/train.py reads from the command line
    assert run_cfg.output_dir == str(folder / c.slug)
    assert (run_cfg.tracking.experiment, run_cfg.tracking.run_name) == (name, c.slug)
    assert run_cfg.tracking.tracking_uri == s.tracking_uri
    assert (run_cfg.token_dropout.drop_ratio, run_cfg.pmae.enabled, run_cfg.optim.lr) == (0.5, True, 1e-4)
    assert run_cfg.tracking.tags == {
        "owner": "me",
        "turbo_ds.sweep_id": s.sweep_id,
        "turbo_ds.sweep_name": name,
        "turbo_ds.sweep.varied": "token_dropout.drop_ratio,pmae.enabled",
        "turbo_ds.sweep.token_dropout.drop_ratio": "0.5",
        "turbo_ds.sweep.pmae.enabled": "true",
    }
    cmd = s.command(c, master_port=12345)
    assert cmd[1] == str(TRAIN_SCRIPT) and cmd[-2:] == ["--resume", "latest"]
    two = spec.build(cfg, DS, grid, num_gpus=2, out=tmp_path / "sweeps").command(c, master_port=12345)
    assert two[1:8] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "12345"] + [
        str(TRAIN_SCRIPT)
    ]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    server = spec.build(cfg, DS, grid, out=tmp_path / "sweeps")
    assert (server.tracking_uri, server.artifact_location) == ("http://mlflow.example:5000", None)


def test_the_sweeps_store_wins_over_the_environment_in_the_sweep_and_in_its_runs(tmp_path, monkeypatch):
    """``--tracking-uri`` over ``$MLFLOW_TRACKING_URI`` for the sweep; each run gets the sweep's store as
    ``tracking.tracking_uri``, which the trainer's rule prefers to the variable the run inherits."""
    from turbo_ds.tracking import store_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    cfg = write_config({}, tmp_path / "base.yaml")
    chosen = f"sqlite:///{tmp_path}/chosen.db"
    s = spec.build(cfg, DS, ["seed=1,2"], out=tmp_path / "sweeps", tracking_uri=chosen)
    assert (s.tracking_uri, s.artifact_location) == (chosen, (s.folder / "mlartifacts").as_uri())
    for c in s.combos:
        run_cfg = load_config(cfg, s.run_overrides(c))
        assert store_uri(run_cfg.output_dir, run_cfg.tracking.tracking_uri) == chosen


@pytest.mark.parametrize(
    "grid, message",
    [
        (
            "token_dropout.drop_ratio=0,1.5",
            "combination 2/2 (token_dropout.drop_ratio=1.5): config key 'token_dropout.drop_ratio' = 1.5: "
            "must be in [0, 1)",
        ),
        (
            "token_dropout.drop_rate=0,0.5",
            "combination 1/2 (token_dropout.drop_rate=0): unknown config key(s) 'token_dropout.drop_rate'; "
            "valid keys in 'token_dropout': drop_ratio, strategy, final_dense_steps",
        ),
    ],
)
def test_bad_combination_is_one_line_before_anything_runs(grid, message, tmp_path, capsys):
    cfg = write_config({"train": {"max_steps": 4}}, tmp_path / "c.yaml")
    argv = ["--config", str(cfg), "--ds_config", DS, "--grid", grid, "--out", str(tmp_path / "sweeps")]
    assert run_cli(cli.main, argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"turbo_ds: error: {message}"]
    assert not (tmp_path / "sweeps").exists()


def test_only_the_ranks_get_the_stop_signal_and_a_second_ctrl_c_kills():
    script = "/repo/scripts/train.py"
    assert runs_script(["python", script, "--config", "c.yaml"], script)  # one process
    assert runs_script(["python", "-u", script, "--local_rank=1"], script)  # a rank under deepspeed
    assert runs_script(["python", "-X", "utf8", script], script)
    # The deepspeed runner and launcher name the script as an argument; a spawned worker runs -c.
    assert not runs_script(["python", "-m", "deepspeed.launcher.runner", "--num_gpus", "2", script], script)
    assert not runs_script(
        ["python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=x", script], script
    )
    assert not runs_script(["python", "-c", "from multiprocessing.spawn import spawn_main"], script)

    class FakeChild:
        def __init__(self):
            self.calls = []

        def signal_ranks(self, signum):
            self.calls.append(signal.Signals(signum).name)

        def kill(self):
            self.calls.append("kill")

    signals, child = SweepSignals(), FakeChild()
    signals.attach(child)
    signals._handle(signal.SIGINT, None)  # Ctrl-C: the ranks save and exit 75
    signals._handle(signal.SIGINT, None)  # again: the run is killed
    assert child.calls == ["SIGTERM", "kill"] and signals.exit_status == 130
    signals, child = SweepSignals(), FakeChild()
    signals._handle(signal.SIGUSR1, None)  # between runs: passed on as soon as the next one starts
    signals.attach(child)
    assert child.calls == ["SIGUSR1"] and signals.exit_status == 75


def _fake_runner(codes: dict[int, int | str]):
    """A runner that finishes (0: writes final_metrics.json), fails, or gets a signal ('SIGTERM',
    'SIGINT': sent to this process, which the sweep handles, then exits 75 as a stopped run does)."""
    ran: list[int] = []

    def runner(sweep, combo, signals):
        ran.append(combo.index)
        code = codes.get(combo.index, 0)
        if isinstance(code, str):
            os.kill(os.getpid(), getattr(signal, code))
            return 75
        if code == 0:
            combo.run_dir.mkdir(parents=True, exist_ok=True)
            (combo.run_dir / "final_metrics.json").write_text("{}")
        return code

    runner.ran = ran
    return runner


def _statuses(sweep) -> list[tuple[str, int | None]]:
    rec = json.loads((sweep.folder / "sweep.json").read_text())
    return [(c["status"], c["exit_code"]) for c in rec["combinations"]]


def test_loop_records_statuses_and_exits_as_its_runs_call_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "create_experiment", lambda sweep: None)  # no MLflow store: a fake runner
    cfg = write_config({"train": {"max_steps": 4}}, tmp_path / "c.yaml")

    def sweep(name):
        return spec.build(cfg, DS, ["seed=1,2,3,4"], name=name, out=tmp_path)

    s = sweep("a")
    assert run.run(s, runner=_fake_runner({2: 1})) == 1  # a failure: recorded, the others run
    assert _statuses(s) == [("finished", 0), ("failed", 1), ("finished", 0), ("finished", 0)]
    out = capsys.readouterr().out
    assert "[sweep] 2/4 seed=2: running (" in out and "[sweep] 2/4 seed=2: failed (exit 1) after" in out
    assert re.search(r"^ +2  seed=2 +failed \(exit 1\) +\d+\.\d s$", out, re.M)
    runner = _fake_runner({2: 75})  # rerun: finished ones skipped, a preempted run stops the sweep
    assert run.run(s, runner=runner) == 75 and runner.ran == [2]
    assert _statuses(s) == [("skipped", None), ("preempted", 75), ("finished", None), ("finished", None)]
    assert "[sweep] 1/4 skip seed=1: finished" in capsys.readouterr().out

    s = sweep("b")
    runner = _fake_runner({1: 2})
    assert run.run(s, stop_on_failure=True, runner=runner) == 1 and runner.ran == [1]
    assert _statuses(s) == [("failed", 2)] + [("pending", None)] * 3

    for name, sig, code, status in [("c", "SIGTERM", 75, "preempted"), ("d", "SIGINT", 130, "interrupted")]:
        s = sweep(name)
        runner = _fake_runner({2: sig})
        before = signal.getsignal(getattr(signal, sig))
        assert run.run(s, runner=runner) == code and runner.ran == [1, 2]
        assert _statuses(s) == [("finished", 0), (status, 75), ("pending", None), ("pending", None)]
        assert signal.getsignal(getattr(signal, sig)) is before  # the sweep's handlers are gone


@pytest.mark.slow
def test_tiny_sweep_is_one_experiment_of_tagged_runs(tiny_sweep):
    from mlflow.tracking import MlflowClient

    rec = json.loads((tiny_sweep / "sweep.json").read_text())
    assert (rec["experiment"], rec["tracking_uri"]) == ("tiny_sweep", f"sqlite:///{tiny_sweep}/mlflow.db")
    assert not (tiny_sweep.parents[1] / "decoy.db").exists()  # $MLFLOW_TRACKING_URI lost to --tracking-uri
    assert rec["grid"] == {"token_dropout.drop_ratio": [0, 0.75]}
    combos = rec["combinations"]
    assert [(c["slug"], c["status"], c["exit_code"]) for c in combos] == [
        (s, "finished", 0) for s in TINY_SLUGS
    ]
    assert [c["overrides"] for c in combos] == [[s] for s in TINY_SLUGS]
    for c in combos:
        assert (
            Path(c["run_dir"]) == tiny_sweep / c["slug"]
            and (tiny_sweep / c["slug"] / "final_metrics.json").exists()
        )
    client = MlflowClient(rec["tracking_uri"])
    exp = client.get_experiment_by_name("tiny_sweep")
    assert exp.experiment_id == rec["experiment_id"]
    assert exp.artifact_location == rec["artifact_location"] == (tiny_sweep / "mlartifacts").as_uri()
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == sorted(TINY_SLUGS)
    for c, ratio in zip(combos, ("0", "0.75"), strict=True):
        r = runs[c["slug"]]
        assert r.info.run_id == c["mlflow_run_id"] and r.info.status == "FINISHED"
        assert r.info.artifact_uri.startswith(exp.artifact_location + "/")  # not ./mlruns of the cwd
        assert "final_metrics.json" in {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {k: v for k, v in r.data.tags.items() if k.startswith("turbo_ds.")} == {
            "turbo_ds.sweep_id": rec["sweep_id"],
            "turbo_ds.sweep_name": "tiny_sweep",
            "turbo_ds.sweep.varied": "token_dropout.drop_ratio",
            "turbo_ds.sweep.token_dropout.drop_ratio": ratio,
            "turbo_ds.task": "classification",
            "turbo_ds.headline": "val/top1,val/top5,val/loss",
        }
        assert r.data.params["token_dropout.drop_ratio"] == str(float(ratio))
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [1, 2, 3, 4]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/top1")] == [2, 4]
    out = (tiny_sweep.parents[1] / "sweep.out").read_text()
    assert f"[sweep] 2/2 {TINY_SLUGS[1]}: running ({tiny_sweep / TINY_SLUGS[1]})" in out
    compare = (
        f"python scripts/compare.py --experiment tiny_sweep --tracking-uri sqlite:///{tiny_sweep}/mlflow.db "
        f"--out {tiny_sweep}/report"
    )
    assert compare in out and rec["compare_command"] == compare


@pytest.mark.slow
def test_rerun_skips_finished_runs(tiny_sweep, tmp_path, no_launch_env, monkeypatch, capsys):
    copy = tmp_path / "sweeps" / "tiny_sweep"
    shutil.copytree(tiny_sweep, copy)  # the fixture stays as it was
    monkeypatch.setattr(run, "launch", lambda *a: pytest.fail("a finished run was launched again"))
    cfg = tiny_sweep.parents[1] / "cfg.yaml"
    argv = ["--config", str(cfg), "--ds_config", DS, "--grid", TINY_SWEEP_GRID, "--name", "tiny_sweep"]
    assert cli.main([*argv, "--out", str(tmp_path / "sweeps")]) == 0
    rec = json.loads((copy / "sweep.json").read_text())
    assert [(c["status"], c["wall_s"]) for c in rec["combinations"]] == [("skipped", None)] * 2
    out = capsys.readouterr().out
    assert all(f"[sweep] {i}/2 skip {s}: finished" in out for i, s in enumerate(TINY_SLUGS, 1))
    assert "note:" not in out  # same base arguments as the first invocation


@pytest.mark.slow
def test_stopped_sweep_resumes_its_run_in_the_same_mlflow_run(demo_data, tmp_path, no_launch_env):
    """SIGTERM to the sweep after the run's first evaluation: the sweep passes it to the run, which
    saves a checkpoint and exits 75, and so does the sweep. The same command again resumes the run
    from that checkpoint into the same MLflow run, whose system metrics (tracking.system_metrics,
    sampled every 0.05 s) go on from where they stopped."""
    from mlflow.tracking import MlflowClient

    cfg = sweep_config(
        demo_data,
        tmp_path / "cfg.yaml",
        train={"max_steps": 48, "eval_every": 2, "eval_max_batches": 1, "log_every": 2},
        checkpoint={"save_final": True},
        # tiny steps (~20 ms): sampled often enough that the resumed half logs system metrics too
        tracking={"system_metrics": True, "system_metrics_interval_s": 0.05},
    )
    argv = ["--config", str(cfg), "--ds_config", DS, "--grid", "token_dropout.drop_ratio=0.5"]
    argv += ["--name", "stopped", "--out", str(tmp_path / "sweeps")]
    folder = tmp_path / "sweeps" / "stopped"
    run_dir = folder / "token_dropout.drop_ratio=0.5"

    def sigterm_after_first_eval():
        """After the first evaluation and the first system-metrics sample (a loaded machine samples
        late): then both halves of the run log system metrics, and the steps must follow each other."""
        deadline = time.monotonic() + 120
        while not (run_dir / "evals.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        store = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        while time.monotonic() < deadline:
            runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
            if runs and "system/cpu_utilization_percentage" in runs[0].data.metrics:
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late signal must not end pytest
    try:
        thread = threading.Thread(target=sigterm_after_first_eval, daemon=True)
        thread.start()
        status = cli.main(argv)
        thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    (c,) = json.loads((folder / "sweep.json").read_text())["combinations"]
    assert (status, c["status"], c["exit_code"]) == (75, "preempted", 75)
    stopped = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("global_step"))
    assert 2 <= stopped < 48 and not (run_dir / "final_metrics.json").exists()

    assert cli.main(argv) == 0
    rec = json.loads((folder / "sweep.json").read_text())
    (c,) = rec["combinations"]
    assert (c["status"], c["resumed_from"]) == ("finished", f"global_step{stopped}")
    client = MlflowClient(rec["tracking_uri"])
    (r,) = client.search_runs([rec["experiment_id"]])
    assert r.info.run_id == c["mlflow_run_id"] and r.info.status == "FINISHED"
    assert r.data.tags["turbo_ds.stopped_by"] == "SIGTERM"
    assert r.data.tags["turbo_ds.resumed_at_step"] == str(stopped)
    steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and set(range(2, 49, 2)) <= set(steps)
    cpu = [m.step for m in client.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")]
    assert len(cpu) >= 2 and len(set(cpu)) == len(cpu), cpu  # the resumed run's steps follow the first's
    assert {"system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= set(r.data.metrics)
