"""The logging window: the training steps since the last ``train/*`` record, averaged over the window
and the ranks every ``train.log_every`` steps, with the window's data wait (``loop.data_wait``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from turbo_ds.loop import data_wait
from turbo_ds.loop.memory import peak_memory_mb


class LoggingWindow:
    """The loop adds each step (:meth:`add`); the step itself adds the seconds it waited for its batches
    (``data_wait_s``) and the tokens it ran (``tokens``); :meth:`record` (a collective: every rank calls
    it at the same step) returns the window's ``train/*`` metrics and starts the next window.

    ``first_step``: the step this process started from; the data-wait advice waits for a window
    without this process's first step (worker start-up, compilation).
    """

    def __init__(self, engine, cfg, train_loader, backend: str, log: Callable[[str], None], first_step: int):
        self.engine, self.cfg, self.loader, self.backend, self.log = engine, cfg, train_loader, backend, log
        self.first_step = first_step
        self.clips_per_step = cfg.optim.micro_batch_size * cfg.optim.grad_accum_steps * engine.world_size
        self._advice_given = False
        self._loaded_at_start = (0.0, 0)  # the train loader's (load_seconds, batches_loaded)
        self._reset()

    def _reset(self) -> None:
        self.values: dict[str, float] = {}
        self.n, self.seconds, self.tokens, self.data_wait_s = 0, 0.0, 0.0, 0.0
        self.lr = 0.0

    def __bool__(self) -> bool:
        return self.n > 0

    def add(self, values: dict[str, float], seconds: float, lr: float) -> None:
        """One step's mean values, its duration and its learning rate."""
        for k, v in values.items():
            self.values[k] = self.values.get(k, 0.0) + v
        self.n, self.seconds, self.lr = self.n + 1, self.seconds + seconds, lr

    @property
    def data_wait_frac(self) -> float:
        """This window's data wait so far, as a share of its time (the progress bar's ``data``)."""
        return self.data_wait_s / max(self.seconds, 1e-9)

    def due(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.max_steps

    def record(self, step: int, epoch: int, nonfinite_total: int) -> dict[str, float]:
        """The window's metrics, averaged over its steps and the ranks; starts the next window."""
        eng, n, seconds = self.engine, self.n, self.seconds
        keys = sorted(self.values)
        vec = eng.all_reduce_mean(torch.tensor([self.values[k] / n for k in keys] + [self.tokens]))
        rec = {f"train/{k}": float(v) for k, v in zip(keys, vec[:-1].tolist(), strict=True)}
        rec.update(
            {
                "train/lr": self.lr,
                "train/clips_per_s": self.clips_per_step * n / max(seconds, 1e-9),
                "train/tokens_per_s": float(vec[-1]) * eng.world_size / max(seconds, 1e-9),
                "train/step_time_s": seconds / n,
                "train/peak_mem_mb": float(eng.all_reduce_max(torch.tensor(peak_memory_mb(eng.device)))),
                "train/nonfinite_total": float(nonfinite_total),
                "train/epoch": float(epoch),
            }
        )
        if (g := eng.grad_norm) is not None and math.isfinite(g):
            rec["train/grad_norm"] = g
        rec.update(self._data_wait_record(step))
        self._reset()
        return rec

    def _data_wait_record(self, step: int) -> dict[str, float]:
        """The window's data wait, and its advice line once, after warm-up."""
        loader, eng, n, seconds = self.loader, self.engine, self.n, self.seconds
        load_s = loader.load_seconds - self._loaded_at_start[0]
        loaded = loader.batches_loaded - self._loaded_at_start[1]
        self._loaded_at_start = (loader.load_seconds, loader.batches_loaded)
        wait = self.data_wait_s
        wait_max = eng.all_reduce_max(torch.tensor([wait / n, wait / max(seconds, 1e-9)]))
        load_per_batch = float(eng.all_reduce_mean(torch.tensor(load_s / max(loaded, 1))))
        wait_s, wait_frac = (float(v) for v in wait_max)
        accum = self.cfg.optim.grad_accum_steps
        model_per_batch = max(seconds / n - wait_s, 0.0) / accum
        rec = {
            "train/data_wait_s": wait_s,
            "train/data_wait_frac": wait_frac,
            "train/data_load_s_per_batch": load_per_batch,
            "train/data_workers_needed": float(data_wait.workers_needed(load_per_batch, model_per_batch)),
        }
        warmed_up = step - n >= self.first_step + 1  # the window starts after this process's first step
        if warmed_up and wait_frac > data_wait.WAIT_FRACTION_ADVICE and not self._advice_given:
            self._advice_given = True
            d = self.cfg.data
            self.log(
                data_wait.advice(
                    wait_frac,
                    wait_s,
                    seconds / n,
                    load_per_batch,
                    model_per_batch,
                    self.cfg.optim.micro_batch_size,
                    d.num_workers,
                    d.backend if d.backend == self.backend else f"{d.backend}: {self.backend}",
                )
            )
        return rec
