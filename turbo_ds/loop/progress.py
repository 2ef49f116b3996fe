"""Progress bars on rank 0's stdout: the training steps and each evaluation's batches."""

from __future__ import annotations

import sys


def progress(iterable=None, **kwargs):
    """A tqdm bar on stdout, as the loop draws them (a log file gets a line every 15 s)."""
    from tqdm import tqdm

    interval = 0.5 if sys.stdout.isatty() else 15.0
    return tqdm(iterable, dynamic_ncols=True, file=sys.stdout, mininterval=interval, **kwargs)


class TrainingBar:
    """The bar of training steps, with the last step's loss and clips/s and the logging window's data
    wait; does nothing when ``enabled`` is false (ranks other than 0, ``train.progress_bar: false``)."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self._bar = progress(None, total=total, initial=initial, desc="train") if enabled else None

    def update(self, loss: float, clips_per_s: float, data_wait_frac: float) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix(
            loss=f"{loss:.3f}",
            clips_s=f"{clips_per_s:.1f}",
            data=f"{100 * data_wait_frac:.0f}%",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
