"""Stop requests from a scheduler: a signal on any rank -> every rank stops at the same step boundary.

SLURM sends SIGTERM before it preempts or cancels a job and, with ``#SBATCH --signal=USR1@180``, SIGUSR1
some time before the time limit (then SIGKILL once its grace time is over). A handler only records the
signal; the loop asks :meth:`StopRequest.agreed` at every step boundary, which all-reduces "did any
rank get one", so the ranks that got it and those that did not stop together. The trainer then saves
a checkpoint, marks the MLflow run and exits with :data:`EXIT_PREEMPTED`; a requeued job continues
from it with ``--resume latest``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

# EX_TEMPFAIL (sysexits.h): "try again later". scripts/slurm/train.sbatch requeues the job on it.
EXIT_PREEMPTED = 75
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def signal_number(name: str) -> int:
    """``signal.SIGUSR1`` for ``"SIGUSR1"`` (or ``"USR1"``); ValueError for a name this platform lacks
    or one that cannot be caught."""
    full = name if name.upper().startswith("SIG") else f"SIG{name}"
    full = full.upper()
    if full in _UNCATCHABLE or not isinstance(getattr(signal, full, None), signal.Signals):
        raise ValueError(f"{name!r} is not a signal a process can catch here")
    return int(getattr(signal, full))


class Preempted(Exception):
    """Raised out of ``Trainer.fit`` once every rank has saved after a stop request."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} saved. "
            "Continue with --resume latest."
        )


class SignalHandlers:
    """``handle`` installed for several signals, the previous handlers put back by :meth:`restore`
    (a run inside a test or a notebook leaves no trace). Main thread only: Python delivers signals
    there, and ``signal.signal`` refuses other threads (then nothing is installed)."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}

    def install_for(self, signums: Sequence[int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in signums:
            self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        raise NotImplementedError


class StopRequest(SignalHandlers):
    """Records the first of ``signals`` this process receives; :meth:`agreed` decides collectively.

    Install with :meth:`install`, put the previous handlers back with :meth:`restore`.
    """

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS):
        super().__init__()
        self.signums = [signal_number(s) for s in signals]
        self.received: int = 0

    def install(self) -> StopRequest:
        self.install_for(self.signums)
        return self

    def _handle(self, signum: int, frame) -> None:
        # Only record: the loop may be inside a collective or a checkpoint write.
        self.received = self.received or signum

    def agreed(self, engine) -> str | None:
        """The name of a signal some rank received (the same answer on every rank), else None.
        A collective: every rank must call it at the same point of the loop."""
        import torch

        got = int(engine.all_reduce_max(torch.tensor(float(self.received))).item())
        return signal.Signals(got).name if got else None
