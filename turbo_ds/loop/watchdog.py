"""A rank that stops making progress ends with an error naming the rank and what it waited for.

A data hang (a worker stuck on a network filesystem) or a stalled peer (a rank stuck in a collective
waits for the others, on NCCL or gloo, up to the process group's 30-minute timeout, and a stopped peer
never errors at all) would otherwise hang a run silently until the scheduler kills it. The loop calls
:meth:`StallWatchdog.beat` with what it is about to wait for; a daemon thread checks that beats keep
coming. After ``timeout_s`` without one it prints one line, the stalled thread's stack, and ends the
process with :data:`EXIT_STALLED` (the main thread is blocked in C code: raising in it is impossible).
The launcher then stops the other ranks (``deepspeed`` and ``torchrun`` do when one rank exits non-zero).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

EXIT_STALLED = 124  # what coreutils `timeout` returns


class StallWatchdog:
    """``timeout_s`` <= 0 turns it off. ``on_stall(message)`` replaces the print-and-exit (tests)."""

    def __init__(
        self,
        timeout_s: float,
        rank: int,
        on_stall: Callable[[str], None] | None = None,
        poll_s: float | None = None,
    ):
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self.on_stall = on_stall or self._exit
        self.poll_s = poll_s if poll_s is not None else min(5.0, max(0.05, self.timeout_s / 20))
        self.waiting_for = "the start of training"
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main_thread_id = threading.main_thread().ident

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def beat(self, waiting_for: str) -> None:
        """Progress was made; the caller is now waiting for ``waiting_for`` (a phrase: "the next
        training batch from the DataLoader")."""
        self._last = time.monotonic()
        self.waiting_for = waiting_for

    def start(self) -> StallWatchdog:
        if self.enabled and self._thread is None:
            self._last = time.monotonic()
            self._main_thread_id = threading.current_thread().ident
            self._thread = threading.Thread(target=self._watch, name="turbo_ds-stall-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.poll_s))
            self._thread = None

    def __enter__(self) -> StallWatchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            idle = time.monotonic() - self._last
            if idle >= self.timeout_s:
                self.on_stall(
                    f"rank {self.rank} stalled: no progress for {idle:.0f} s while waiting for "
                    f"{self.waiting_for} (train.stall_timeout_s = {self.timeout_s:g})"
                )
                return

    def _exit(self, message: str) -> None:
        print(f"turbo_ds: error: {message}", file=sys.stderr, flush=True)
        print(
            f"[turbo_ds] rank {self.rank}: where the stalled thread is waiting:", file=sys.stderr, flush=True
        )
        frame = sys._current_frames().get(self._main_thread_id)
        if frame is not None:
            traceback.print_stack(frame, file=sys.stderr)
        else:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(EXIT_STALLED)
