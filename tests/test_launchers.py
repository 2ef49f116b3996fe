"""Multi-node launches, each as 2 "nodes" of one process on this machine over 127.0.0.1 (gloo), against
``deepspeed --num_gpus 2`` on one node (same seed, ZeRO-2): deepspeed --hostfile --no_ssh per node,
torchrun --nnodes 2 per node, and scripts/slurm/train.sbatch with stand-ins for srun and scontrol that set
the variables srun sets. Plus the sbatch script's stop-and-requeue logic (status 75), without training.

Losses are compared exactly, the final parameter checksum within 1e-6 relative: one node all-reduces the
gradients through DeepSpeed's shared-memory op, two "nodes" through gloo, whose float summation orders
may differ. With 2 ranks each sum is one commutative addition, and losses and checksums have come out
bit-identical; the tolerance is for a backend that would sum or average in another order.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import PY, ROOT, clean_env, free_port, summaries, tiny_config, write_config

from turbo_ds.cli import EXIT_PREEMPTED

pytestmark = pytest.mark.slow  # every test here launches training processes

SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
STEPS = 4
TIMEOUT = 240

# Stands in for srun: starts SLURM_NTASKS copies of the command, each as task 0 of its own "node", with
# the variables srun sets in a task; forwards USR1 to them (as srun does) and exits with the highest
# status. SHIM_SRUN=exit:N or SHIM_SRUN=wait-usr1 replace the command (the requeue tests).
SRUN_SHIM = r"""#!/usr/bin/env bash
echo "srun $*" >> "$SHIM_LOG"
while [[ ${1:-} == -* ]]; do shift; done  # srun's own options
case ${SHIM_SRUN:-run} in
exit:*) exit "${SHIM_SRUN#exit:}" ;;
wait-usr1)
    trap 'echo "srun got USR1" >> "$SHIM_LOG"; exit 75' USR1
    trap 'echo "srun got TERM" >> "$SHIM_LOG"; exit 75' TERM
    echo $$ > "$SHIM_LOG.pid"
    while :; do sleep 0.05; done ;;
esac
n=$SLURM_NTASKS
pids=()
for ((i = 0; i < n; i++)); do
    SLURM_STEP_ID=0 SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i SLURM_STEP_NUM_TASKS=$n \
        SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST SLURM_STEP_TASKS_PER_NODE="1(x$n)" "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${pids[@]}"' USR1
rc=0
for p in "${pids[@]}"; do
    wait "$p"; s=$?
    ((s > rc)) && rc=$s
done
exit $rc
"""
SCONTROL_SHIM = """#!/usr/bin/env bash
echo "scontrol $*" >> "$SHIM_LOG"
"""


def node_env() -> dict[str, str]:
    # One thread per process, as deepspeed --num_gpus 2 gives each of its 2 ranks on the 2 cores here.
    return {**clean_env(), "OMP_NUM_THREADS": "1"}


def train_args(cfg: Path) -> list[str]:
    return ["scripts/train.py", "--ds_config", "ds_configs/zero2.json", "--config", str(cfg)]


def run_together(cmds: list[list[str]], envs: list[dict[str, str]] | None = None) -> list[str]:
    """Start every command at once (the "nodes"), wait for all; fail with their output."""
    envs = envs or [node_env()] * len(cmds)
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c, e in zip(cmds, envs, strict=True)
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for c, p, out in zip(cmds, procs, outs, strict=True):
        assert p.returncode == 0, f"{' '.join(c)} failed ({p.returncode}):\n{out[-6000:]}"
    return outs


def run_config(demo: Path, work: Path) -> Path:
    out = work / "out"
    cfg = tiny_config(
        demo,
        out,
        train={"max_steps": STEPS, "eval_every": 0, "eval_max_batches": 1},
        checkpoint={"every_steps": 0, "save_final": False},
        tracking={"enabled": False, "memory_plan": False},
        data={"test_split": None},
    )
    return write_config(cfg, work / "cfg.yaml")


def assert_same_run(out: Path, ref: Path) -> None:
    got, want = summaries(out, 2), summaries(ref, 2)[0]
    for s in got:
        assert s["steps"] == list(range(1, STEPS + 1))
        assert s["train_loss"] == want["train_loss"], "the two-node run's losses differ from one node's"
        rel = abs(s["params_checksum"] - want["params_checksum"]) / abs(want["params_checksum"])
        assert rel < 1e-6, (s["params_checksum"], want["params_checksum"])


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory) -> Path:
    """deepspeed --num_gpus 2 on one node. It also checks a clean exit (status 0, every rank's process
    group destroyed, no abort at interpreter exit) with a DataLoader worker and an MLflow run to tear
    down; neither changes the numbers (items are a function of seed, epoch and index)."""
    work = tmp_path_factory.mktemp("ref")
    cfg = run_config(demo_data, work)
    port = str(free_port())
    extra = ["--debug", "--set", "data.num_workers=1", "--set", "tracking.enabled=true"]
    (log,) = run_together(
        [
            [
                PY,
                "-m",
                "deepspeed.launcher.runner",
                "--num_gpus",
                "2",
                "--master_port",
                port,
                *train_args(cfg),
                *extra,
            ]
        ]
    )
    for rank in (0, 1):
        assert f"rank {rank}: process group destroyed" in log
    assert "terminate called" not in log and (work / "out" / "mlflow.db").exists()
    # DeepSpeed's CPU shared-memory all-reduce buffers (66 MB per rank, in RAM) are not left behind.
    leftovers = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    assert not leftovers, leftovers
    return work / "out"


@pytest.mark.slow
def test_deepspeed_no_ssh_one_invocation_per_node(reference, demo_data, tmp_path):
    # Names only: with --no_ssh the runner never resolves or reaches them; --node_rank picks this node's
    # line, whose slots are its local ranks.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    cfg = run_config(demo_data, tmp_path)
    port = str(free_port())
    run_together(
        [
            [PY, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh"]
            + [
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                *train_args(cfg),
            ]
            for node in (0, 1)
        ]
    )
    assert_same_run(tmp_path / "out", reference)


@pytest.mark.slow
def test_torchrun_one_invocation_per_node(reference, demo_data, tmp_path):
    cfg = run_config(demo_data, tmp_path)
    port = str(free_port())
    run_together(
        [
            [PY, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node)]
            + ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, *train_args(cfg)]
            for node in (0, 1)
        ]
    )
    assert_same_run(tmp_path / "out", reference)


def free_port_in(lo: int, hi: int) -> int:
    for port in random.sample(range(lo, hi), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


def shims(folder: Path) -> dict[str, str]:
    """srun and scontrol stand-ins on PATH; SHIM_LOG records their calls."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SHIM_LOG": str(folder / "calls.log")}


def batch_env(folder: Path, job_id: int = 4242, **extra: str) -> dict[str, str]:
    """The batch shell's environment as sbatch sets it (no RANK/WORLD_SIZE anywhere)."""
    env = {
        **node_env(),
        **shims(folder),
        "PYTHON": PY,
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NODELIST": "127.0.0.[1-2]",  # two "nodes" named by loopback addresses; rank 0 on the first
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "0",  # the batch shell's own (it is no task of the step)
        "SLURM_STEP_ID": str(0xFFFFFFFB),  # the batch step's reserved id
    }
    env.pop("OMP_NUM_THREADS")  # the script sets it (from SLURM_CPUS_PER_TASK, else 1)
    env.update(extra)
    return env


def wait_for_text(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
def test_sbatch_script_trains_like_one_node(reference, demo_data, tmp_path):
    """The real script, its srun starting 2 tasks that find rank, world, master address and port in
    SLURM's variables alone (the port derived from the job id, so pick a job id whose port is free)."""
    cfg = run_config(demo_data, tmp_path)
    job_id = free_port_in(20000, 30000) - 20000 + 30000  # 20000 + job_id % 10000 is that port
    out = run_together(
        [["bash", str(SBATCH), "--ds_config", "ds_configs/zero2.json", "--config", str(cfg)]],
        [batch_env(tmp_path, job_id)],
    )[0]
    assert_same_run(tmp_path / "out", reference)
    assert "training ClassificationTask for 4 steps on 2 rank(s)" in out
    (srun,) = [c for c in calls(tmp_path) if c.startswith("srun")]
    assert srun.endswith("--resume latest") and "scontrol" not in "".join(calls(tmp_path))


@pytest.mark.parametrize(
    ("status", "restarts", "requeued"),
    [(EXIT_PREEMPTED, "0", True), (0, "0", False), (1, "0", False), (EXIT_PREEMPTED, "100", False)],
)
def test_sbatch_requeues_on_status_75(tmp_path, status, restarts, requeued):
    env = batch_env(
        tmp_path, SHIM_SRUN=f"exit:{status}", SLURM_RESTART_COUNT=restarts, SLURM_CPUS_PER_TASK="6"
    )
    proc = subprocess.run(["bash", str(SBATCH), "--config", "c.yaml", "--resume", "x"], env=env, timeout=30)
    assert proc.returncode == status
    (srun, *rest) = calls(tmp_path)
    # --cpus-per-task passed on to srun; the user's --resume kept, no second one added
    assert srun.startswith("srun --cpus-per-task=6 ") and srun.endswith("--resume x")
    assert rest == (["scontrol requeue 4242"] if requeued else [])


@pytest.mark.parametrize(("sig", "requeued"), [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_sbatch_forwards_usr1_and_never_requeues_after_sigterm(tmp_path, sig, requeued):
    """USR1 to the batch shell (--signal=B:USR1@180) reaches srun; SIGTERM (scancel, time limit,
    preemption) is SLURM's to deliver to the tasks, and a job cancelled must not come back."""
    env = batch_env(tmp_path, SHIM_SRUN="wait-usr1")
    proc = subprocess.Popen(["bash", str(SBATCH), "--config", "c.yaml"], env=env)
    srun_pid = int(wait_for_text(tmp_path / "calls.log.pid"))  # the shim's traps are set
    proc.send_signal(sig)
    if sig == signal.SIGTERM:  # SLURM signals the step's tasks too; the shim stands in for them
        time.sleep(0.2)
        os.kill(srun_pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == EXIT_PREEMPTED
    got = calls(tmp_path)
    assert ("srun got USR1" in got) is requeued
    assert ("scontrol requeue 4242" in got) is requeued
