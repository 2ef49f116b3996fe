"""Preemption and stalls: a signal on one rank stops every rank at the same step boundary with a
checkpoint and exit status 75, and the resumed run equals the uninterrupted one; a kill -9 during a
checkpoint write leaves ``latest`` at the previous checkpoint; a stalled rank exits 124 naming itself
and what it waited for."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import PY, ROOT, STEPS, clean_env, free_port, launch, summaries, tiny_config, write_config

from turbo_ds.cli import EXIT_PREEMPTED
from turbo_ds.config import ConfigError, load_config
from turbo_ds.loop.preemption import StopRequest
from turbo_ds.loop.watchdog import EXIT_STALLED, StallWatchdog
from turbo_ds.signals import signal_number

pytestmark = pytest.mark.slow  # every test here launches training processes

TRAIN = ["scripts/train.py", "--ds_config", "ds_configs/zero2.json", "--config"]


class _OneRank:
    def all_reduce_max(self, t):
        return t


def test_stop_request_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest(["SIGUSR1", "TERM"]).install()
    try:
        assert stop.agreed(_OneRank()) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agreed(_OneRank()) == "SIGUSR1"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is before
    with pytest.raises(ValueError, match="SIGKILL"):
        signal_number("SIGKILL")


def test_stop_signals_and_stall_timeout_are_validated(tmp_path):
    cfg = write_config({"data": {"index": "x.parquet"}}, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"'train.stop_signals'.*SIGNOPE"):
        load_config(cfg, ["train.stop_signals=[SIGTERM,SIGNOPE]"])
    with pytest.raises(ConfigError, match=r"'train.stall_timeout_s' = -1"):
        load_config(cfg, ["train.stall_timeout_s=-1"])


def test_watchdog_names_the_rank_and_what_it_waited_for():
    fired: list[str] = []
    done = threading.Event()

    def on_stall(msg):
        fired.append(msg)
        done.set()

    # Beats 0.1 s apart against a 1 s timeout: a busy machine's scheduling delays stay far below it.
    with StallWatchdog(1.0, rank=3, on_stall=on_stall, poll_s=0.02) as dog:
        for _ in range(15):  # beats keep coming: no stall
            dog.beat("the next training batch")
            time.sleep(0.1)
        assert not fired
        dog.beat("step 7's collectives")
        assert done.wait(5)
    assert len(fired) == 1
    assert fired[0].startswith("rank 3 stalled: no progress for 1 s while waiting for step 7's collectives")
    assert "train.stall_timeout_s = 1" in fired[0]
    assert not StallWatchdog(0, rank=0).start().enabled  # 0 = off: no thread


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the training processes under a deepspeed launcher."""
    import psutil

    ranks = {}
    for p in psutil.Process(launcher_pid).children(recursive=True):
        try:  # a rank's parent is deepspeed.launcher.launch (its DataLoader workers' is the rank)
            if "deepspeed.launcher.launch" in " ".join(p.parent().cmdline()):
                ranks[int(p.environ()["RANK"])] = p.pid
        except (psutil.Error, KeyError):
            continue
    return ranks


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float = 240) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"never saw {pattern!r}:\n{''.join(lines)[-4000:]}")


def test_signal_on_one_rank_stops_all_then_resume_is_exact(run_a, demo_data, tmp_path):
    """Like run_a (tests/conftest.py), but SIGUSR1 reaches rank 1 only, after the step-4 checkpoint:
    both ranks save at the same step and exit 75, the MLflow run is marked; --resume latest ends with
    run_a's losses and weights exactly."""
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    cfg = write_config(tiny_config(demo_data, out), tmp_path / "cfg.yaml")
    cmd = [PY, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port())]
    proc = subprocess.Popen(
        [*cmd, *TRAIN, str(cfg)],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = _read_until(proc, r"saved checkpoint .*global_step4")
        os.kill(_rank_pids(proc.pid)[1], signal.SIGUSR1)
        rest, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == EXIT_PREEMPTED, log[-4000:]
    (stop_line,) = [ln for ln in log.splitlines() if ln.startswith("turbo_ds: stopped by SIGUSR1")]
    stopped = int(re.search(r"at step (\d+)", stop_line).group(1))
    assert 4 <= stopped < STEPS, log[-3000:]
    assert (out / "checkpoints" / "latest").read_text() == f"global_step{stopped}"
    ref = summaries(run_a, 2)[0]
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["train/loss"] for h in history] == ref["train_loss"][:stopped]

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test_train").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["turbo_ds.stopped_by"] == "SIGUSR1"
    assert run.data.tags["turbo_ds.stopped_at_step"] == str(stopped)

    launch([*TRAIN, str(cfg), "--resume", "latest"], nprocs=2)
    resumed = summaries(out, 2)
    assert resumed[0]["steps"] == list(range(stopped + 1, STEPS + 1))
    assert resumed[0]["train_loss"] == ref["train_loss"][stopped:], "resumed losses differ"
    assert resumed[0]["params_checksum"] == resumed[1]["params_checksum"] == ref["params_checksum"]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["turbo_ds.resumed_at_step"] == str(stopped)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(1, STEPS + 1)), "the resumed run continues the same MLflow history"
    # Training time goes on from the checkpoint (step 4's evaluation before the stop, the final one after)
    times = [json.loads(x)["train/time_s"] for x in (out / "evals.jsonl").read_text().splitlines()]
    assert len(times) == 2 and 0 < times[0] < times[1], times


def _short_config(demo_data, tmp_path: Path, **sections) -> Path:
    base = tiny_config(
        demo_data,
        tmp_path / "out",
        train={"max_steps": 6, "eval_every": 0},
        data={"test_split": None, "num_workers": 0},
        tracking={"enabled": False, "memory_plan": False},
    )
    for k, v in sections.items():
        base[k].update(v)
    return write_config(base, tmp_path / "cfg.yaml")


def test_kill_9_while_a_checkpoint_is_written_keeps_the_previous_latest(demo_data, tmp_path):
    cfg = _short_config(demo_data, tmp_path, checkpoint={"every_steps": 2})
    marker = tmp_path / "writing"
    driver = [PY, "tests/fault_injection.py", "save-hangs", "global_step4", str(marker), "--"]
    proc = subprocess.Popen(
        [*driver, *TRAIN[1:], str(cfg)],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate()[0].decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    ckpt = tmp_path / "out" / "checkpoints"
    assert (ckpt / "global_step4").is_dir() and Path(marker.read_text()).parent == ckpt / "global_step4"
    assert (ckpt / "latest").read_text() == "global_step2"  # the half-written step 4 is not the resume point
    done = launch([*TRAIN, str(cfg), "--resume", "latest"], nprocs=1)
    assert re.search(r"resumed from .*checkpoints at step 2 ", done.stdout), done.stdout[-2000:]
    assert (ckpt / "latest").read_text() == "global_step6"
    (s,) = summaries(tmp_path / "out", 1)
    assert s["steps"] == [3, 4, 5, 6]


def test_a_rank_waiting_on_data_exits_124_naming_it(demo_data, tmp_path):
    cfg = _short_config(demo_data, tmp_path, train={"stall_timeout_s": 4})
    driver = [PY, "tests/fault_injection.py", "data-hangs", "7", "--"]  # 2 clips a step: step 4's batch
    t0 = time.monotonic()
    proc = subprocess.run(
        [*driver, *TRAIN[1:], str(cfg)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == EXIT_STALLED, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("turbo_ds: error:")]
    assert re.match(
        r"turbo_ds: error: rank 0 stalled: no progress for \d+ s while waiting for the next training batch "
        r"from the DataLoader \(0 worker\(s\) per rank\) \(train.stall_timeout_s = 4\)",
        line,
    ), line
    assert "getitem" in proc.stderr  # the stalled thread's stack shows where
    assert time.monotonic() - t0 < 200


def test_a_rank_whose_peer_stalls_exits_124_naming_it(demo_data, tmp_path):
    """Two ranks started as torchrun would (RANK, WORLD_SIZE, MASTER_*); rank 1 is stopped (SIGSTOP)
    after step 2's checkpoint: rank 0 ends within the timeout saying it waited for the other ranks."""
    cfg = _short_config(
        demo_data, tmp_path, train={"stall_timeout_s": 5, "max_steps": 40}, checkpoint={"every_steps": 2}
    )
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **clean_env(),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "2",
        }
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(
            subprocess.Popen(
                [PY, *TRAIN, str(cfg)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                stderr=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        _read_until(procs[0], r"saved checkpoint .*global_step2")
        procs[1].send_signal(signal.SIGSTOP)
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == EXIT_STALLED, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("turbo_ds: error:")]
    assert re.match(r"turbo_ds: error: rank 0 stalled: no progress for \d+ s while waiting for ", line), line
    assert "collectives with all 2 rank(s)" in line or "the other ranks" in line, line


def test_epoch_end_collective_is_named_to_the_watchdog():
    """At an epoch's end the batch generator runs the data-failure report, an all-gather over every rank:
    a peer stopped there must read as waiting for the other ranks, not for the DataLoader."""
    from types import SimpleNamespace

    from turbo_ds.loop.data import EpochBatches
    from turbo_ds.loop.trainer import Trainer

    dog = StallWatchdog(0, rank=0)
    seen: list[str] = []

    class Loader(list):
        def set_epoch(self, epoch):
            seen.append(f"set_epoch({epoch})")

    fake = SimpleNamespace(watchdog=dog)
    fake._report_data_failures = lambda final: seen.append(dog.waiting_for)
    batches = EpochBatches(Loader([{"i": 0}, {"i": 1}]), lambda epoch: Trainer._end_of_epoch(fake, epoch))
    assert seen == []  # nothing fetched before the first batch is asked for
    assert [next(batches)["i"] for _ in range(3)] == [0, 1, 0]  # epoch 0, then epoch 1 starts
    assert seen == [
        "set_epoch(0)",
        "the other ranks at the end of epoch 0 (the data-failure report's all-gather)",
        "set_epoch(1)",
    ]
    assert batches.epoch == 1
