"""SLURM's variables -> the launch variables (turbo_ds.engine.slurm), on dict environments: hostlists,
tasks per node, only inside an srun step, explicit variables win; env_rank() and the rank-0-only error
line of turbo_ds.cli agree with them before any process group exists."""

from __future__ import annotations

import pytest

from turbo_ds.cli import EXIT_USAGE, run_cli
from turbo_ds.config import ConfigError
from turbo_ds.engine import distributed
from turbo_ds.engine.slurm import expand_hostlist, first_host, launch_env, tasks_per_node


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node07", ["node07"]),
        ("a,b", ["a", "b"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("gpu-[1-2]", ["gpu-1", "gpu-2"]),
        ("gpu-[9-11]", ["gpu-9", "gpu-10", "gpu-11"]),
        ("x[08-10],y", ["x08", "x09", "x10", "y"]),
        ("b[3],a[1-2]", ["b3", "a1", "a2"]),  # the order written, as scontrol show hostnames
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("10.0.0.[5-6]", ["10.0.0.5", "10.0.0.6"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert list(expand_hostlist(hostlist)) == hosts
    assert first_host(hostlist) == hosts[0]


def test_first_host_of_a_huge_range_is_lazy_and_empty_list_fails():
    assert first_host("n[000001-999999]") == "n000001"
    with pytest.raises(ValueError, match="empty"):
        first_host("")


def test_tasks_per_node():
    assert tasks_per_node("8") == [8]
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(ValueError):
        tasks_per_node("two")


def step_env(**extra) -> dict[str, str]:
    """A task of an srun step as srun sets it: rank 5 of 2 nodes x 4 tasks."""
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu-[07-08]",
        "SLURM_STEP_NODELIST": "gpu-[07-08]",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    }
    env.update(extra)
    return env


def test_srun_step_gives_every_launch_variable():
    assert launch_env(step_env()) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu-07",
        "MASTER_PORT": str(20000 + 123456 % 10000),
    }


def test_uneven_nodes_and_fallbacks():
    env = step_env(SLURM_STEP_TASKS_PER_NODE="3,1", SLURM_NODEID="1")
    assert launch_env(env)["LOCAL_WORLD_SIZE"] == "1"
    # Only the job-level variables (the minimum the launcher tests set).
    env = step_env()
    for key in ("SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE"):
        del env[key]
    env["SLURM_NTASKS_PER_NODE"] = "4"
    got = launch_env(env)
    assert (got["WORLD_SIZE"], got["LOCAL_WORLD_SIZE"], got["MASTER_ADDR"]) == ("8", "4", "gpu-07")
    # A format we do not know: no LOCAL_WORLD_SIZE (distributed falls back to the world size).
    del env["SLURM_NTASKS_PER_NODE"]
    env["SLURM_TASKS_PER_NODE"] = "4(y2)"
    assert "LOCAL_WORLD_SIZE" not in launch_env(env)


def test_explicit_variables_win():
    got = launch_env(step_env(MASTER_PORT="29500", MASTER_ADDR="10.0.0.1"))
    assert "MASTER_PORT" not in got and "MASTER_ADDR" not in got and got["RANK"] == "5"
    # A launcher inside the step (torchrun, deepspeed) sets RANK and WORLD_SIZE: SLURM's are not used.
    assert launch_env(step_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")) == {}


@pytest.mark.parametrize("step_id", [None, "4294967291", "-5", "4294967290", "batch", "extern"])
def test_not_an_srun_step(step_id):
    # The batch shell of sbatch has SLURM_PROCID=0 and the job's SLURM_NTASKS but runs once; its step id
    # is a reserved one (printed unsigned or signed), or absent.
    env = step_env(SLURM_PROCID="0", SLURM_LOCALID="0")
    del env["SLURM_STEP_ID"], env["SLURM_STEP_NUM_TASKS"]
    if step_id is not None:
        env["SLURM_STEP_ID"] = step_id
    assert launch_env(env) == {}
    assert launch_env({}) == {}


def use_env(monkeypatch, env: dict[str, str]) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_env_rank_reads_slurm_before_init(monkeypatch):
    use_env(monkeypatch, step_env())
    assert (distributed.env_rank(), distributed.env_world_size(), distributed.env_local_rank()) == (5, 8, 1)
    monkeypatch.setenv("RANK", "3")  # what a launcher set wins
    assert distributed.env_rank() == 3


@pytest.mark.parametrize(("procid", "printed"), [("0", True), ("1", False)])
def test_cli_error_line_on_slurm_rank_0_only(monkeypatch, capsys, procid, printed):
    use_env(monkeypatch, step_env(SLURM_PROCID=procid, SLURM_LOCALID=procid))

    def bad_config(argv):
        raise ConfigError("config key 'optim.lr' = -1: must be > 0")

    assert run_cli(bad_config, []) == EXIT_USAGE
    assert ("turbo_ds: error: config key 'optim.lr'" in capsys.readouterr().err) is printed


@pytest.mark.parametrize(
    ("local_rank", "visible", "device"),
    [(0, 8, 0), (3, 8, 3), (7, 8, 7), (3, 1, 0), (0, 1, 0)],
    ids=["first-of-node", "own-of-node", "last-of-node", "gpus-per-task", "single"],
)
def test_cuda_device_of_a_rank(local_rank, visible, device):
    assert distributed.cuda_device_index(local_rank, visible) == device


def test_two_ranks_on_one_gpu_is_an_error():
    with pytest.raises(ValueError, match=r"local rank 2 but this process sees 2 GPU\(s\)"):
        distributed.cuda_device_index(2, 2)
