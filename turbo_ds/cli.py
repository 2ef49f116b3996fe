"""Exit statuses of the command-line entry points (``scripts/train.py``, ``scripts/eval.py``).

0: the run finished. 75: stopped by a scheduler's signal after saving a checkpoint (``train.stop_signals``;
rank 0 prints ``turbo_ds: stopped by ...``; continue with ``--resume latest``). 124: a rank stalled
(``train.stall_timeout_s``, see ``turbo_ds.loop.watchdog``). 2: a config or input error (an unknown config key, a ds_config that disagrees with
the config, a missing index or checkpoint): rank 0 prints ``turbo_ds: error: <message>`` on stderr and
no traceback, the other ranks exit quietly with the same status; ``--debug`` prints the traceback too.
1: anything else, with its traceback. A failing run tears down its process group without waiting for
the other ranks (a peer may never arrive); a finished run waits for all of them first. A ``main``
that returns an int (``scripts/sweep.py``: the status its runs call for) exits with it.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from turbo_ds.config import ConfigError


def add_set_flag(p, help: str = "override a config value (repeatable)") -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable, into ``args.overrides``), as every entry point spells it."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help
    )


def add_debug_flag(
    p,
    help: str = "a config or input error prints its traceback too; every rank says when its process group is gone",
) -> None:
    p.add_argument("--debug", action="store_true", help=help)


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# EX_TEMPFAIL (sysexits.h): "try again later". scripts/slurm/train.sbatch requeues the job on it.
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Raised out of ``Trainer.fit`` once every rank has saved after a stop request."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} saved. "
            "Continue with --resume latest."
        )


# Packages whose ValueErrors are checks written for a user; a ValueError raised inside a library is a
# bug or an unexpected state and keeps its traceback.
_OWN_PACKAGES = ("turbo_ds", "data_index")


def is_usage_error(exc: BaseException) -> bool:
    """A config or input error: a ConfigError, a missing file, or a ValueError raised by our own checks."""
    if isinstance(exc, (ConfigError, FileNotFoundError)):
        return True
    if not isinstance(exc, ValueError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    g = tb.tb_frame.f_globals if tb is not None else {}
    module = g.get("__name__", "")
    if module == "__main__" and g.get("__spec__") is not None:  # python -m turbo_ds.plan
        module = g["__spec__"].name
    return module.split(".", 1)[0] in _OWN_PACKAGES


def run_cli(
    main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, process_group: bool = True
) -> int:
    """Run ``main(argv)`` and return the exit status (see the module docstring). ``process_group=False``:
    a tool that never starts one (``scripts/compare.py``), so neither torch nor a rank is looked up."""
    if process_group:
        from turbo_ds.engine import distributed

        rank, teardown = distributed.env_rank, distributed.destroy
    else:
        rank, teardown = (lambda: 0), (lambda barrier: None)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        result = main(argv)
    except Preempted as e:  # main has torn the process group down in agreement with every rank
        if rank() == 0:
            print(f"turbo_ds: {e}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except Exception as e:
        with contextlib.suppress(Exception):  # never hide the run's own error behind a teardown one
            teardown(barrier=False)
        if not is_usage_error(e):
            raise  # the traceback, exit status 1
        if debug:
            traceback.print_exc()
        if rank() == 0:
            print(f"turbo_ds: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return result if type(result) is int else EXIT_OK  # a training main returns its final metrics
