"""Keep FFmpeg's messages off the console during a decode and hand them to the caller instead.

decord (and the FFmpeg bundled in its wheel) prints from C straight to file descriptor 2, so the only
way to catch it is to point fd 2 at a scratch file for the duration of the call. PyAV's FFmpeg (a
separate copy) goes through PyAV's log callback; PyAV drops it unless a level is set, so the level is
raised to WARNING for the call and :class:`av.logging.Capture` collects the messages.

Limitation: fd 2 belongs to the whole process. While a capture is active, whatever another thread of
the process writes to stderr lands in the capture too (and is dropped if the decode succeeds).
DataLoader workers are processes, so this only concerns ``num_workers=0`` with another thread writing
to stderr at that moment. Only one thread captures at a time: a second thread that decodes meanwhile
does so uncaptured rather than tangling the two redirections.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading

MAX_BYTES = 1 << 16  # read back at most this much of one call's output
MAX_CHARS = 2000  # and keep at most this much of it, condensed

_lock = threading.Lock()
_scratch: tuple[int, int] | None = None  # (pid, fd) of this process's scratch file


def _scratch_fd() -> int:
    global _scratch
    # A forked DataLoader worker inherits the parent's fd, whose offset the two would share: its own file.
    if _scratch is None or _scratch[0] != os.getpid():
        with tempfile.TemporaryFile(prefix="turbo_ds_ffmpeg_") as f:
            _scratch = (os.getpid(), os.dup(f.fileno()))
    return _scratch[1]


def _take(fd: int) -> str:
    """What was written to the scratch file since the last call; leaves it empty."""
    size = os.fstat(fd).st_size
    if size == 0:
        return ""
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, min(size, MAX_BYTES))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return data.decode("utf-8", "backslashreplace")


def condense(text: str, limit: int = MAX_CHARS) -> str:
    """Distinct non-empty lines in first-seen order, a repeated one once with its count
    (``... partial file (x184)``), cut to ``limit`` characters."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line := line.strip():
            counts[line] = counts.get(line, 0) + 1
    out = "\n".join(line if n == 1 else f"{line} (x{n})" for line, n in counts.items())
    return out if len(out) <= limit else out[: limit - 3] + "..."


class FfmpegLog:
    """``with FfmpegLog() as log:`` anything FFmpeg, decord or PyAV prints inside ends up in ``log.text``
    (condensed) instead of on stderr; the redirection is undone even when the body raises."""

    def __init__(self) -> None:
        self.text = ""
        self._owner = False

    def __enter__(self) -> FfmpegLog:
        self._owner = _lock.acquire(blocking=False)
        if not self._owner:
            return self
        try:
            sys.stderr.flush()  # Python's pending stderr goes out now, not into the capture
            self._saved_fd = os.dup(2)
        except BaseException:
            self._release()
            raise
        try:
            os.dup2(_scratch_fd(), 2)
            self._av = _AvCapture()
        except BaseException:
            self._unredirect()
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        if not self._owner:
            return False
        try:
            try:
                av_lines = self._av.close()
            finally:
                self._unredirect()
            self.text = condense("\n".join([_take(_scratch_fd()), *av_lines]))
        finally:
            self._release()  # only now: the scratch file is this capture's until it is read
        return False

    def _unredirect(self) -> None:
        try:
            sys.stderr.flush()  # what Python wrote meanwhile belongs to the capture
        finally:
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)

    def _release(self) -> None:
        self._owner = False
        _lock.release()


class _AvCapture:
    """PyAV's log messages from now until :meth:`close`, from every thread."""

    def __init__(self) -> None:
        import av.logging

        self._logging = av.logging
        self._level = av.logging.get_level()
        if self._level is None:  # PyAV's default: messages dropped, nothing to capture
            av.logging.set_level(av.logging.WARNING)
        # PyAV holds back a message equal to the previous one, even from an earlier call: keep each.
        self._skip_repeated = av.logging.get_skip_repeated()
        av.logging.set_skip_repeated(False)
        self._capture = av.logging.Capture(local=False)
        self._logs = self._capture.__enter__()

    def close(self) -> list[str]:
        self._capture.__exit__(None, None, None)
        self._logging.set_skip_repeated(self._skip_repeated)
        if self._level is None:
            self._logging.set_level(None)
        return [f"[{name or 'libav'}] {message.strip()}" for _, name, message in self._logs]
