"""Signal names and handlers, for the entry points that must react to a scheduler's signals (the training
loop's stop request, the sweep passing signals on to its runs). Standard library only."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def signal_number(name: str) -> int:
    """``signal.SIGUSR1`` for ``"SIGUSR1"`` (or ``"USR1"``); ValueError for a name this platform lacks
    or one that cannot be caught."""
    full = name if name.upper().startswith("SIG") else f"SIG{name}"
    full = full.upper()
    if full in _UNCATCHABLE or not isinstance(getattr(signal, full, None), signal.Signals):
        raise ValueError(f"{name!r} is not a signal a process can catch here")
    return int(getattr(signal, full))


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
