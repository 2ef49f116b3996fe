"""Exit statuses of scripts/train.py and scripts/eval.py: 0 after a clean teardown (the process group
destroyed on every rank), 2 with one ``turbo_ds: error:`` line for a config or input error (on rank 0
only under the deepspeed launcher), the traceback with ``--debug``, 1 and a traceback otherwise."""

from __future__ import annotations

import fractions
import subprocess

import pytest
from helpers import PY, ROOT, clean_env, free_port

from turbo_ds.cli import EXIT_USAGE, is_usage_error, run_cli
from turbo_ds.config import ConfigError

pytestmark = pytest.mark.slow  # every test here launches training processes

DEMO = ["--config", "configs/demo_classification.yaml", "--ds_config", "ds_configs/zero2.json"]
ERR = "turbo_ds: error:"


def run(args: list[str], nprocs: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """Like test_train.launch, but returns a failing run instead of raising."""
    cmd = [PY, *args]
    if nprocs > 1:
        cmd = [PY, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nprocs)]
        cmd += ["--master_port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ERR in ln]


def test_bad_config_key_one_line_exit_2():
    proc = run(["scripts/train.py", *DEMO, "--set", "optim.micro_batch=3"])
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "'optim.micro_batch'" in lines[0], proc.stderr
    assert lines[0].startswith(ERR) and lines[0] in proc.stderr.splitlines()


def test_debug_shows_the_traceback():
    proc = run(["scripts/train.py", *DEMO, "--set", "optim.micro_batch=3", "--debug"])
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    assert len(error_lines(proc)) == 1


def test_two_ranks_print_one_line_exit_2():
    # A ds_config that disagrees with the config fails once the process group exists: the one-line
    # path must tear it down too (a bad key, before the group, is test_bad_config_key_one_line_exit_2).
    bad = "optim.global_batch_size=7"
    proc = run(["scripts/train.py", *DEMO, "--set", bad], nprocs=2)
    assert proc.returncode == EXIT_USAGE, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(error_lines(proc)) == 1, error_lines(proc)
    assert bad.split("=")[0] in proc.stderr  # (the ds_config message lists its mismatches below)


def test_eval_missing_checkpoint_one_line_exit_2(tmp_path):
    proc = run(["scripts/eval.py", "--checkpoint", str(tmp_path / "missing"), "--split", "val"])
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc)) == 1


def _raise(exc: BaseException):
    def main(argv):
        raise exc

    return main


def test_which_errors_are_usage_errors():
    assert run_cli(_raise(ConfigError("bad key")), []) == EXIT_USAGE
    assert run_cli(_raise(FileNotFoundError("no index")), []) == EXIT_USAGE
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(_raise(ConfigError("bad key")), [], process_group=False) == EXIT_USAGE  # compare.py
    assert run_cli(lambda argv: {"step": 3.0}, []) == 0  # a training main returns its final metrics
    assert run_cli(lambda argv: 75, []) == 75  # a sweep returns the status its runs call for
    # A ValueError from our own checks is a usage error; one from inside a library is a bug.
    from turbo_ds.config import load_config
    from turbo_ds.engine.ds_config import fill_ds_config

    with pytest.raises(ValueError) as own:
        fill_ds_config({"scheduler": {}}, load_config(ROOT / "configs" / "demo_classification.yaml"), 1)
    assert is_usage_error(own.value)
    with pytest.raises(ValueError) as foreign:
        fractions.Fraction("one half")
    assert not is_usage_error(foreign.value)
    with pytest.raises(RuntimeError):  # unexpected: re-raised, so Python prints it and exits 1
        run_cli(_raise(RuntimeError("boom")), [])
