"""One run of a sweep as a child process, and what the sweep does with the signals it gets.

The run gets a process group of its own, so a Ctrl-C in the terminal reaches the sweep only. The sweep
then passes a stop on to the training processes (the ranks), which save a checkpoint at the next step
boundary and exit 75 (``turbo_ds.loop.preemption``): a scheduler's SIGTERM / SIGUSR1 is passed as it came,
Ctrl-C as SIGTERM; a second Ctrl-C kills the run. Only the ranks are signalled, never the deepspeed
launcher between: it answers a SIGTERM by terminating its ranks and exiting 1, and the 75 (saved,
resume me) would be lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from turbo_ds.signals import SignalHandlers

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Child:
    """``cmd`` running in its own process group; ``script`` is how its ranks are recognised."""

    def __init__(self, cmd: list[str], script: str | Path, env: dict[str, str] | None = None):
        self.script = str(script)
        # Python >= 3.11 can make the group without a new session (the run keeps the terminal's).
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        self.proc = subprocess.Popen(cmd, env=env, **group)

    def wait(self, grace_s: float = 30.0) -> int:
        """The run's exit status, once every process of its group is gone too (a launcher that died
        may leave ranks still writing a checkpoint; after ``grace_s`` they are killed)."""
        code = self.proc.wait()
        deadline = time.monotonic() + grace_s
        while _group_alive(self.proc.pid):
            if time.monotonic() > deadline:
                self.kill()
                break
            time.sleep(0.1)
        return code

    def signal_ranks(self, signum: int) -> int:
        """Send ``signum`` to every process of the run whose script is the training script (the ranks,
        and their forked DataLoader workers, which ignore the stop signals); returns how many got it."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # already gone
            return 0
        sent = 0
        for p in procs:
            try:
                if runs_script(p.cmdline(), self.script):
                    p.send_signal(signum)
                    sent += 1
            except psutil.Error:
                continue
        return sent

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.proc.pid, signal.SIGKILL)


def runs_script(cmdline: list[str], script: str) -> bool:
    """Whether ``cmdline`` is ``python [options] script ...``. The launcher's own processes name the
    script too, as an argument (``python -m deepspeed.launcher.runner ... script``): they are not ranks."""
    args, i = cmdline[1:], 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("-m", "-c"):
            return False
        i += 2 if args[i] in ("-W", "-X") else 1
    return i < len(args) and args[i] == script


def _group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` still runs (zombies do not count: an init that does not reap
    orphans, as in some containers, would keep them forever)."""
    import psutil

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


class SweepSignals(SignalHandlers):
    """Installed while the sweep runs: records the first stop signal and acts on the running child."""

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self.child: Child | None = None

    def install(self) -> SweepSignals:
        self.install_for(_HANDLED)
        return self

    @property
    def exit_status(self) -> int:
        """75 for a scheduler's signal (a requeued sweep resumes), 130 for a Ctrl-C."""
        from turbo_ds.cli import EXIT_PREEMPTED

        return EXIT_INTERRUPTED if self.received == signal.SIGINT else EXIT_PREEMPTED

    def attach(self, child: Child | None) -> None:
        """The child signals now go to (None: between runs). A signal that came while it started is
        passed on at once."""
        self.child = child
        if child is not None and self.received is not None:
            self._forward(self.received)

    def _handle(self, signum: int, frame) -> None:
        again = self.received is not None
        self.received = self.received or signum
        if signum == signal.SIGINT:
            print(
                "\n[sweep] Ctrl-C: "
                + (
                    "killing the run"
                    if again
                    else "stopping the run at its next step (Ctrl-C again kills it)"
                ),
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"[sweep] {signal.Signals(signum).name}: stopping the run at its next step", flush=True)
        if again and signum == signal.SIGINT and self.child is not None:
            self.child.kill()
            return
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self.child is not None:
            self.child.signal_ranks(signal.SIGTERM if signum == signal.SIGINT else signum)
