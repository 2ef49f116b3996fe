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
from collections.abc import Sequence

from turbo_ds.signals import SignalHandlers, signal_number

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


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
