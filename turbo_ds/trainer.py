"""The training loop: config -> data -> task -> engine -> steps, evaluation, checkpoints, MLflow.

One loop for every task: it only sees ``TaskOutput(loss, losses, metrics, batch_size)``. A "step" is an
optimizer step (``optim.grad_accum_steps`` micro batches). ``main(argv)`` is what ``scripts/train.py``
calls, under ``deepspeed``, ``torchrun`` or plain ``python``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turbo_ds.cli import add_debug_flag, add_set_flag
from turbo_ds.config import TrainConfig, config_to_dict, flatten, load_config, save_config
from turbo_ds.preemption import Preempted, StopRequest
from turbo_ds.watchdog import StallWatchdog

CHECKPOINT_SUBDIR = "checkpoints"


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_nonfinite_in_row`` consecutive non-finite losses."""


# --------------------------------------------------------------------------- RNG and memory helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_untouched():
    """Run a block (e.g. creating a DataLoader iterator, which draws a seed) without moving the RNGs,
    so that where an iterator is created never changes the training randomness (exact resume)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA allocator memory on GPU, peak resident set size on the CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


# --------------------------------------------------------------------------- data


def build_loader(cfg: TrainConfig, spec, split: str, rank: int, world_size: int, output_dir: Path):
    """The loader a task's :class:`~turbo_ds.tasks.DataSpec` asks for, on this rank's share of ``split``."""
    from turbo_ds.data import build_dataloader

    d = cfg.data
    if spec.batch_size is not None:
        batch_size = spec.batch_size
    elif spec.train:
        batch_size = cfg.optim.micro_batch_size
    else:
        batch_size = d.eval_batch_size or cfg.optim.micro_batch_size
    kwargs = dict(
        root=spec.root if spec.index else d.root,
        split=split,
        sampler=spec.sampler,
        train=spec.train,
        batch_size=batch_size,
        num_frames=d.num_frames,
        stride=d.frame_stride,
        img_size=d.img_size,
        hflip=d.hflip if spec.train else 0.0,
        scale=tuple(d.crop_scale),
        num_workers=d.num_workers,
        rank=rank,
        world_size=world_size,
        seed=cfg.seed,
        backend=d.backend,
        decode_device=d.decode_device,
        decode_once=d.decode_once,
        max_failures=d.max_failures,
        failure_log_dir=output_dir / "data_failures",
        pin_memory=torch.cuda.is_available(),
    )
    kwargs.update(spec.kwargs)
    return build_dataloader(spec.index or d.index, **kwargs)


def _iterate(loader) -> Iterator[dict[str, Any]]:
    """Batches of ``loader``; fetching them never moves the global RNGs (a DataLoader iterator draws
    its base seed lazily, at the first ``next``), so a resumed run draws exactly what the original did."""
    it = iter(loader)
    while True:
        try:
            with rng_untouched():
                batch = next(it)
        except StopIteration:
            return
        yield batch


# --------------------------------------------------------------------------- evaluation


def _progress(iterable=None, **kwargs):
    """A tqdm bar on stdout, as the trainer draws them (a log file gets a line every 15 s)."""
    from tqdm import tqdm

    interval = 0.5 if sys.stdout.isatty() else 15.0
    return tqdm(iterable, dynamic_ncols=True, file=sys.stdout, mininterval=interval, **kwargs)


@torch.no_grad()  # no autograd graph: evaluation memory is that of inference
def evaluate(
    engine,
    loader,
    evaluator=None,
    max_batches: int | None = None,
    prefix: str = "val",
    batch_keys: dict[str, Any] | None = None,
    heartbeat: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Run the task on every batch of this rank's share of a split (with ``batch_keys`` added to each,
    see ``EvalSpec.batch_keys``), feed ``evaluator`` (default: a weighted mean of losses and metrics)
    and return its cross-rank result as ``{prefix}/name``. ``progress``: a bar on rank 0.

    All ranks run the same number of forwards (ZeRO-3 gathers parameters collectively): a rank whose
    share is exhausted repeats its last batch, and that output is not given to the evaluator.
    ``heartbeat(what)`` is called before every batch (see :class:`~turbo_ds.watchdog.StallWatchdog`).
    """
    from turbo_ds.tasks.base import MeanEvaluator

    evaluator = evaluator if evaluator is not None else MeanEvaluator()
    was_training = engine.ds.training
    engine.eval()
    n_local = len(loader) if max_batches is None else min(len(loader), max_batches)
    n_batches = int(engine.all_reduce_max(torch.tensor(float(n_local))).item())
    last = None
    it = _iterate(loader)
    steps: Iterable[int] = range(n_batches)
    if progress and engine.is_rank_0 and n_batches > 1:
        steps = _progress(steps, desc=f"eval {prefix}", unit="batch", leave=False)
    with rng_untouched():
        for i in steps:
            if heartbeat is not None:
                heartbeat(f"evaluation '{prefix}' batch {i + 1} of {n_batches} (data, forward, collectives)")
            batch = next(it, None) if i < n_local else None
            padding = batch is None
            if padding:
                batch = last
            if batch is None:  # this rank has no samples at all: nothing to run collectively with
                continue
            last = batch
            out = engine(engine.to_device({**batch, **(batch_keys or {})}))
            if not padding:
                evaluator.update(batch, out)
    result = {f"{prefix}/{k}": float(v) for k, v in evaluator.compute(engine).items()}
    engine.train(was_training)
    return result


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Builds everything from a resolved config and a ds_config; :meth:`fit` runs the loop.

    The loop knows no task: it asks the task for its training data, its evaluations and its summary
    lines, and sees only ``TaskOutput`` s.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        ds_config: str | Path | dict,
        resume: str | None = None,
        task=None,
        stop_request: StopRequest | None = None,
    ):
        """``stop_request``: signal handlers the caller installed before this (slow) setup, so a signal
        that comes during it still counts; None installs ``train.stop_signals`` for :meth:`fit` only."""
        from turbo_ds.engine import distributed
        from turbo_ds.engine.checkpointing import apply_activation_checkpointing
        from turbo_ds.engine.engine import Engine, resolve_ds_config
        from turbo_ds.tasks import build_task
        from turbo_ds.tracking import create_tracker

        self.out_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.out_dir / CHECKPOINT_SUBDIR
        rank, world = distributed.init_distributed()
        self.rank, self.world_size = rank, world
        self.ds_config = resolve_ds_config(ds_config, cfg, world)
        seed_everything(cfg.seed)  # same initial weights on every rank
        self.task = task if task is not None else build_task(cfg)
        # The saved config carries the task's resolved options (defaults, num_classes from the index).
        options = {**cfg.task.options, **self.task.options_dict()}
        self.cfg = cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, options=options))
        if cfg.model.activation_checkpointing != "none":
            n = None if cfg.model.checkpoint_num_blocks < 0 else cfg.model.checkpoint_num_blocks
            offload = bool(self.ds_config.get("activation_checkpointing", {}).get("cpu_checkpointing", False))
            apply_activation_checkpointing(
                self.task,
                cfg.model.activation_checkpointing,
                n,
                offload_to_cpu=offload,
                ds_config=self.ds_config,
            )
        self.engine = Engine(self.task, self.ds_config, cfg)
        self.train_loader = build_loader(
            cfg, self.task.train_data(), cfg.data.train_split, rank, world, self.out_dir
        )
        self.decoder = self.train_loader.decoder  # resolved once per process; eval loaders reuse it
        self.eval_specs = self.task.eval_specs()
        self._drop_ratio: float | None = None  # the token dropout ratio last set on the task
        self._eval_loaders: dict[int, Any] = {}

        self.stop_request = stop_request
        self.watchdog = StallWatchdog(cfg.train.stall_timeout_s, rank)  # started by fit()
        self.step = 0
        self.epoch = 0
        self.nonfinite_total = 0
        self.run_id = None
        self.train_time_s = 0.0  # time in training steps (not evaluation or checkpointing), whole run
        self.train_clips = 0
        self.data_wait_s = 0.0  # this logging window's seconds waiting for training batches
        self._loaded_at_window_start = (0.0, 0)  # the train loader's (load_seconds, batches_loaded)
        self._data_advice_given = False
        # Token dropout / drop path differ per rank; they are seeded from (seed, rank).
        seed_everything(cfg.seed + 1000003 * (rank + 1))
        if resume:
            self._resume(resume)
        if self.is_rank_0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            with open(self.out_dir / "ds_config.json", "w") as f:
                json.dump(self.ds_config, f, indent=2)
        t = cfg.tracking
        self.tracker = create_tracker(
            t.enabled,
            self.is_rank_0,
            self.out_dir,
            t.experiment,
            t.run_name,
            t.tracking_uri,
            run_id=self.run_id,
            system_metrics_interval_s=t.system_metrics_interval_s if t.system_metrics else None,
        )
        self.run_id = self.tracker.run_id
        # Again on a resume: tags are mutable, and a run resumed under new tags should carry them.
        self.tracker.set_tags(
            {**t.tags, "turbo_ds.task": cfg.task.name, "turbo_ds.headline": ",".join(self.headline_metrics())}
        )
        self.log(self.decoder.line())
        if self.is_rank_0 and self.step == 0:
            self._log_params()
        elif self.step > 0:
            self.tracker.set_tags({"turbo_ds.resumed_at_step": self.step})

    @property
    def is_rank_0(self) -> bool:
        return self.engine.is_rank_0

    def log(self, msg: str) -> None:
        if self.is_rank_0:
            print(f"[turbo_ds] {msg}", flush=True)

    # ------------------------------------------------------------------ tracking
    def _log_params(self) -> None:
        from turbo_ds.tracking import git_commit, library_versions

        params = flatten(config_to_dict(self.cfg))
        params.update({f"ds.{k}": v for k, v in flatten(self.ds_config).items()})
        params.update(library_versions())
        params.update({"world_size": self.world_size, "git_commit": git_commit()})
        params.update(self.task.tracking_params())
        params["data.backend_resolved"] = self.decoder.backend
        params["num_parameters"] = sum(p.numel() for p in self.task.parameters())
        params["num_trainable_parameters"] = sum(p.numel() for p in self.task.parameters() if p.requires_grad)
        self.tracker.log_params(params)
        self.tracker.log_artifact(self.out_dir / "config.yaml")
        self.tracker.log_artifact(self.out_dir / "ds_config.json")

    # ------------------------------------------------------------------ checkpoints
    def _client_state(self) -> dict[str, Any]:
        return {
            "turbo_ds": {
                "step": self.step,
                "epoch": self.epoch,
                "data": self.train_loader.state_dict(),
                "nonfinite_total": self.nonfinite_total,
                "train_time_s": self.train_time_s,
                "train_clips": self.train_clips,
                "mlflow_run_id": self.run_id,
                "world_size": self.world_size,
                "config": config_to_dict(self.cfg),
            }
        }

    def save(self) -> Path:
        tag = f"global_step{self.step}"
        self.watchdog.beat(f"the checkpoint {tag} (every rank writes its shards, then a barrier)")
        rank_state = {"rng": rng_state(), "data": self.train_loader.state_dict()}
        path = self.engine.save(self.ckpt_dir, tag, self._client_state(), rank_state)
        self.log(f"saved checkpoint {path}")
        return path

    def _resume(self, resume: str) -> None:
        path = self.ckpt_dir if resume == "latest" else Path(resume)
        if resume == "latest" and not (path / "latest").exists() and not (path / "latest_universal").exists():
            self.log(f"--resume latest: no checkpoint under {path}, starting from scratch")
            return
        client, rank_state = self.engine.load(path)
        state = client.get("turbo_ds", {})
        self.step, self.epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        # Training time and clips go on from the checkpoint: train/time_s (quality against time) and
        # train/avg_clips_per_s cover the whole run, not only the part since the last resume.
        self.train_time_s = float(state.get("train_time_s", 0.0))
        self.train_clips = int(state.get("train_clips", 0))
        self.run_id = state.get("mlflow_run_id")
        data_state = (rank_state or {}).get("data") or state.get("data")
        if data_state is not None:
            old_world = int(state.get("world_size", self.world_size))
            if old_world != self.world_size:
                # Different world size (universal checkpoint): the shard order changes, so keep the
                # epoch and skip about as many samples as the old ranks consumed together.
                consumed = int(data_state["position"]) * old_world
                data_state = dict(
                    data_state, world_size=self.world_size, position=consumed // self.world_size
                )
            self.train_loader.load_state_dict(data_state)
        if rank_state is not None and "rng" in rank_state:
            set_rng_state(rank_state["rng"])
        self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch})")

    # ------------------------------------------------------------------ evaluation
    def _eval_loader(self, i: int, spec):
        if i not in self._eval_loaders:
            self._eval_loaders[i] = build_loader(
                self.cfg, spec.data, spec.split, self.rank, self.world_size, self.out_dir
            )
        return self._eval_loaders[i]

    def run_evaluations(self, during_training: bool) -> dict[str, float]:
        """Every evaluation of the task (only those marked ``during_training`` mid-run)."""
        metrics: dict[str, float] = {}
        for i, spec in enumerate(self.eval_specs):
            if during_training and not spec.during_training:
                continue
            loader = self._eval_loader(i, spec)
            metrics.update(
                evaluate(
                    self.engine,
                    loader,
                    spec.make_evaluator(),
                    self.cfg.train.eval_max_batches,
                    prefix=spec.metric_prefix,
                    batch_keys=spec.batch_keys,
                    heartbeat=self.watchdog.beat,
                    progress=self.cfg.train.progress_bar,
                )
            )
        return metrics

    def headline_metrics(self, available: dict[str, float] | None = None) -> list[str]:
        """Full names of the task's headline metrics in its final evaluations (``val/top1``,
        ``test/top1``...), what reports compare runs by; with ``available``, only those it holds."""
        prefixes = dict.fromkeys(spec.metric_prefix for spec in self.eval_specs)
        names = [f"{p}/{k}" for p in prefixes for k in self.task.headline]
        return names if available is None else [n for n in names if n in available]

    def _summary_lines(self, metrics: dict[str, float]) -> list[str]:
        prefixes = dict.fromkeys(spec.metric_prefix for spec in self.eval_specs)
        return [line for p in prefixes for line in (self.task.summary(metrics, p) or "").splitlines() if line]

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Iterator[dict[str, Any]]:
        while True:
            self.train_loader.set_epoch(self.epoch)
            yield from _iterate(self.train_loader)
            # A collective, safe here: the training sampler gives every rank the same number of
            # batches (drop_last), so all ranks finish an epoch at the same micro step.
            self.watchdog.beat(
                f"the other ranks at the end of epoch {self.epoch} (the data-failure report's all-gather)"
            )
            self._report_data_failures(final=False)
            self.epoch += 1

    def _report_data_failures(self, final: bool) -> int:
        """Rank 0 prints how many distinct videos failed to decode so far on all ranks, in training and
        evaluation (nothing at an epoch end without failures), and logs it as ``data/failed_videos``;
        at the end of the run it also writes every rank's entries to
        ``data_failures/decode_failures.jsonl`` and logs that file as an artifact. Collective."""
        from turbo_ds.data import errors

        # The rank's loaders share one file today; a set in case a task points one elsewhere.
        loaders = [self.train_loader, *self._eval_loaders.values()]
        files = sorted({str(loader.dataset.failures.path) for loader in loaders})
        # The entries are few (max_failures caps them), so every report gathers them whole.
        parts = self.engine.all_gather_object(errors.read_entries(files))
        entries = [{"rank": r, **e} for r, part in enumerate(parts) for e in part]
        videos, occurrences = {e["path"] for e in entries}, len(entries)
        if not self.is_rank_0:
            return len(videos)
        where = Path(files[0]).parent
        self.tracker.log_metrics({"data/failed_videos": float(len(videos))}, step=self.step)
        if videos or final:
            self.log(errors.summary_line(len(videos), occurrences, f"{where}/", final))
        if final and videos:
            merged = errors.write_entries(entries, where / "decode_failures.jsonl")
            self.tracker.log_artifact(merged, "data_failures")
        return len(videos)

    def _apply_phase(self) -> None:
        dense_from = self.cfg.train.max_steps - self.cfg.token_dropout.final_dense_steps
        if self.cfg.token_dropout.final_dense_steps and self.step >= dense_from:
            ratio = 0.0
        else:
            ratio = self.cfg.token_dropout.drop_ratio
        if ratio != self._drop_ratio:  # set_drop_ratio walks the task's modules: only on a change
            self.task.set_drop_ratio(ratio)
            self._drop_ratio = ratio

    def _micro_step(self, batch: dict[str, Any]):
        """Forward; backward and step unless the loss is non-finite on any rank (then None)."""
        eng = self.engine
        out = eng(eng.to_device(batch))
        bad = torch.tensor(0.0 if torch.isfinite(out.loss.detach()).all() else 1.0)
        if eng.all_reduce_max(bad).item() > 0:
            # Drop this micro batch on every rank: no backward, no step, DeepSpeed's accumulation
            # counter does not move; the next batch takes its place.
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            self.log(
                f"non-finite loss at step {self.step} (skipped; {self.nonfinite_in_row} in a row, "
                f"{self.nonfinite_total} total)"
            )
            limit = self.cfg.train.max_nonfinite_in_row
            if self.nonfinite_in_row >= limit:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step} "
                    f"(train.max_nonfinite_in_row = {limit}); last losses: "
                    f"{ {k: float(v.detach()) for k, v in out.losses.items()} }. Lower optim.lr, check the data, "
                    "or use bf16 instead of fp16."
                )
            return None
        self.nonfinite_in_row = 0
        eng.backward(out.loss)
        eng.step()
        return out

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], float]:
        """One optimizer step (``optim.grad_accum_steps`` finite micro batches): (mean values, tokens)."""
        accum = self.cfg.optim.grad_accum_steps
        values: dict[str, float] = {}
        tokens = 0.0
        micro = 0
        workers = self.cfg.data.num_workers
        while micro < accum:
            self.watchdog.beat(f"the next training batch from the DataLoader ({workers} worker(s) per rank)")
            t_wait = time.perf_counter()
            batch = next(batches)
            self.data_wait_s += time.perf_counter() - t_wait
            self.watchdog.beat(
                f"step {self.step + 1}'s forward, backward and optimizer step (collectives with all "
                f"{self.world_size} rank(s))"
            )
            out = self._micro_step(batch)
            if out is None:
                continue
            micro += 1
            tokens += float(out.extras.get("tokens_per_clip", 0)) * out.batch_size
            for k, v in {"loss": out.loss, **out.losses, **out.metrics}.items():
                values[k] = values.get(k, 0.0) + float(v.detach()) / accum
        return values, tokens

    def _measured_train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], float]:
        """The first step of this process, its peak memory measured (the CUDA allocator; on the CPU
        the live tensors at its start plus the profiler's count during it) and logged beside the
        planner's prediction for this config (``memory/*``)."""
        from turbo_ds.measure.memory import PeakMemory, live_tensor_bytes

        dev = self.engine.device
        baseline = live_tensor_bytes() if dev.type == "cpu" else 0
        with PeakMemory(dev, baseline_bytes=baseline) as mem:
            result = self._train_step(batches)
        measured = float(self.engine.all_reduce_max(torch.tensor(mem.peak_mb)))
        self._log_memory_plan(measured, mem.method)
        return result

    def _log_memory_plan(self, measured_mb: float, method: str) -> None:
        from turbo_ds.plan import plan
        from turbo_ds.plan.from_config import plan_inputs

        try:
            predicted = plan(*plan_inputs(self.cfg, self.ds_config, self.world_size, self.engine.device.type))
        except Exception as e:  # noqa: BLE001 - the planner must never stop a run
            self.log(f"memory: no prediction for this config ({type(e).__name__}: {e})")
            return
        err = 100.0 * (predicted.total_mb / max(measured_mb, 1e-9) - 1)
        self.log(
            f"memory: predicted peak {predicted.total_mb:,.1f} MiB per rank ({predicted.phase}), measured "
            f"{measured_mb:,.1f} MiB on the first step ({method}): {err:+.1f}%"
        )
        metrics = {"memory/predicted_peak_mb": predicted.total_mb, "memory/measured_peak_mb": measured_mb}
        metrics.update({f"memory/plan/{k}_mb": v / 2**20 for k, v in predicted.items.items()})
        self.tracker.log_metrics(
            {k.replace(" ", "_").replace("(", "").replace(")", ""): v for k, v in metrics.items()}, step=0
        )

    def _window_record(self, window: dict[str, float], n: int, seconds: float, tokens: float, lr: float):
        """The metrics logged every ``train.log_every`` steps, averaged over the window and ranks."""
        eng = self.engine
        clips_per_step = self.cfg.optim.micro_batch_size * self.cfg.optim.grad_accum_steps * self.world_size
        keys = sorted(window)
        vec = eng.all_reduce_mean(torch.tensor([window[k] / n for k in keys] + [tokens]))
        rec = {f"train/{k}": float(v) for k, v in zip(keys, vec[:-1].tolist(), strict=True)}
        rec.update(
            {
                "train/lr": lr,
                "train/clips_per_s": clips_per_step * n / max(seconds, 1e-9),
                "train/tokens_per_s": float(vec[-1]) * self.world_size / max(seconds, 1e-9),
                "train/step_time_s": seconds / n,
                "train/peak_mem_mb": float(eng.all_reduce_max(torch.tensor(peak_memory_mb(eng.device)))),
                "train/nonfinite_total": float(self.nonfinite_total),
                "train/epoch": float(self.epoch),
            }
        )
        if (g := eng.grad_norm) is not None and math.isfinite(g):
            rec["train/grad_norm"] = g
        rec.update(self._data_wait_record(n, seconds))
        return rec

    def _data_wait_record(self, n: int, seconds: float) -> dict[str, float]:
        """The window's data wait (``turbo_ds.data_wait``), and its advice line once, after warm-up (not
        in a window holding this process's first step: worker start-up, compilation). Closes the window."""
        from turbo_ds import data_wait

        loader, eng = self.train_loader, self.engine
        load_s = loader.load_seconds - self._loaded_at_window_start[0]
        loaded = loader.batches_loaded - self._loaded_at_window_start[1]
        self._loaded_at_window_start = (loader.load_seconds, loader.batches_loaded)
        wait, self.data_wait_s = self.data_wait_s, 0.0
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
        warmed_up = self.step - n >= self._first_step + 1
        if warmed_up and wait_frac > data_wait.WAIT_FRACTION_ADVICE and not self._data_advice_given:
            self._data_advice_given = True
            d = self.cfg.data
            line = data_wait.advice(
                wait_frac,
                wait_s,
                seconds / n,
                load_per_batch,
                model_per_batch,
                self.cfg.optim.micro_batch_size,
                d.num_workers,
                d.backend if d.backend == self.decoder.backend else f"{d.backend}: {self.decoder.backend}",
            )
            self.log(line)
        return rec

    def _progress_bar(self):
        if not (self.is_rank_0 and self.cfg.train.progress_bar):
            return None
        return _progress(None, total=self.cfg.train.max_steps, initial=self.step, desc="train")

    def _record_eval(self, metrics: dict[str, float]) -> None:
        """Log one evaluation with the training time so far (quality against wall-clock time:
        ``evals.jsonl`` in the run folder, and ``train/time_s`` in MLflow at the same step)."""
        from turbo_ds.tracking import append_jsonl

        timed = {**metrics, "train/time_s": self.train_time_s}
        self.tracker.log_metrics(timed, step=self.step)
        if self.is_rank_0:
            append_jsonl({"step": self.step, **timed}, self.out_dir / "evals.jsonl")

    def _log_eval(self, metrics: dict[str, float]) -> None:
        self._record_eval(metrics)
        headline = [f"{k} {v:.4g}" for k, v in metrics.items() if k.split("/", 1)[-1] in self.task.headline]
        self.log(f"step {self.step}: " + ", ".join(headline))

    def fit(self) -> dict[str, float]:
        cfg, eng, tcfg = self.cfg, self.engine, self.cfg.train
        clips_per_step = cfg.optim.micro_batch_size * cfg.optim.grad_accum_steps * self.world_size
        self.log(
            f"training {type(self.task).__name__} for {tcfg.max_steps} steps on {self.world_size} rank(s), "
            f"{clips_per_step} clips/step, ds precision {eng.precision}, ZeRO stage "
            f"{self.ds_config.get('zero_optimization', {}).get('stage', 0)}"
        )
        bar = self._progress_bar()
        eng.train()
        batches = self._batches()
        self.nonfinite_in_row = 0
        history: list[dict[str, float]] = []
        window: dict[str, float] = {}
        window_n, window_time, window_tokens = 0, 0.0, 0.0
        t_step = time.perf_counter()
        status = "FAILED"
        first_step = True
        stop = self.stop_request or StopRequest(tcfg.stop_signals).install()
        self._first_step = self.step  # windows before step _first_step + 1 hold the warm-up
        window_wait = 0.0  # for the progress bar: this window's data wait so far
        self.watchdog.start()
        lr = eng.lr
        try:
            while self.step < tcfg.max_steps:
                self.watchdog.beat("the other ranks at the step boundary (the stop-request all-reduce)")
                if (signal_name := stop.agreed(eng)) is not None:
                    if window_n:  # the steps since the last record are not lost from the history
                        rec = self._window_record(window, window_n, window_time, window_tokens, lr)
                        self.tracker.log_metrics(rec, step=self.step)
                        history.append({"step": self.step, **rec})
                    status = "KILLED"  # MLflow's word for a run stopped from outside
                    raise self._stop_for(signal_name, history)
                self._apply_phase()
                lr = eng.lr
                if first_step and cfg.tracking.memory_plan:
                    values, tokens = self._measured_train_step(batches)
                else:
                    values, tokens = self._train_step(batches)
                window_wait = self.data_wait_s
                first_step = False
                self.step += 1
                now = time.perf_counter()
                dt, t_step = now - t_step, now
                self.train_time_s += dt
                self.train_clips += clips_per_step
                for k, v in values.items():
                    window[k] = window.get(k, 0.0) + v
                window_n, window_time, window_tokens = window_n + 1, window_time + dt, window_tokens + tokens
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{values['loss']:.3f}",
                        clips_s=f"{clips_per_step / max(dt, 1e-9):.1f}",
                        data=f"{100 * window_wait / max(window_time, 1e-9):.0f}%",
                        refresh=False,
                    )
                    bar.update(1)
                if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps:
                    rec = self._window_record(window, window_n, window_time, window_tokens, lr)
                    self.tracker.log_metrics(rec, step=self.step)
                    history.append({"step": self.step, **rec})
                    window, window_n, window_time, window_tokens = {}, 0, 0.0, 0.0
                    t_step = time.perf_counter()
                mid_run = self.step < tcfg.max_steps
                if mid_run and tcfg.eval_every and self.step % tcfg.eval_every == 0:
                    self._log_eval(self.run_evaluations(during_training=True))
                    t_step = time.perf_counter()
                every = cfg.checkpoint.every_steps
                if mid_run and every and self.step % every == 0:
                    self.save()
                    t_step = time.perf_counter()
            if bar is not None:
                bar.close()
                bar = None
            final = self._finish(history)
            status = "FINISHED"
            return final
        finally:
            # Teardown in order: the loaders' worker processes, then the MLflow run (the process
            # group goes last, in main, once every rank is here).
            self.watchdog.stop()
            if self.stop_request is None:
                stop.restore()
            batches.close()
            self.close_loaders()
            if bar is not None:
                bar.close()
            self.tracker.finish(status)

    def _stop_for(self, signal_name: str, history: list[dict[str, float]]) -> Preempted:
        """Every rank agreed to stop (a scheduler's signal): save, record, and say how to go on."""
        path = self.save()
        if self.is_rank_0:
            self._append_history(history)
        self.tracker.set_tags({"turbo_ds.stopped_by": signal_name, "turbo_ds.stopped_at_step": self.step})
        stopped = Preempted(signal_name, self.step, str(path))
        self.log(f"{stopped} Exit status 75.")
        return stopped

    def _append_history(self, history: list[dict[str, float]]) -> None:
        """``history.jsonl`` gets this process's records; a resumed run appends after the earlier ones."""
        with open(self.out_dir / "history.jsonl", "a") as f:
            for rec in history:
                f.write(json.dumps(rec) + "\n")

    def close_loaders(self) -> None:
        """Stop the worker processes of every loader now, not at garbage collection (at interpreter
        exit that races the process group's teardown)."""
        for loader in [self.train_loader, *self._eval_loaders.values()]:
            loader.close()

    def _finish(self, history: list[dict[str, float]]) -> dict[str, float]:
        from turbo_ds.tracking import write_json

        cfg = self.cfg
        if cfg.checkpoint.save_final:
            self.save()
        final: dict[str, float] = {"step": float(self.step)}
        if history:
            final.update({k: v for k, v in history[-1].items() if k != "step"})
        evals = self.run_evaluations(during_training=False)
        final.update(evals)
        self._record_eval(evals)
        final["train/nonfinite_total"] = float(self.nonfinite_total)
        final["data/failed_videos"] = float(self._report_data_failures(final=True))
        final["train/time_s"] = self.train_time_s
        final["train/avg_clips_per_s"] = self.train_clips / max(self.train_time_s, 1e-9)
        final["params_checksum"] = self.params_checksum()
        self.tracker.log_metrics({"train/avg_clips_per_s": final["train/avg_clips_per_s"]}, step=self.step)
        if headline := self.headline_metrics(available=final):
            # The start's guess was every prefix x every headline name; some pairs never exist
            # (video_text: retrieval names under the alignment prefix).
            self.tracker.set_tags({"turbo_ds.headline": ",".join(headline)})
        losses = [rec["train/loss"] for rec in history if "train/loss" in rec]
        write_json(
            {
                "rank": self.rank,
                "params_checksum": final["params_checksum"],
                "train_loss": losses,
                "steps": [rec["step"] for rec in history],
            },
            self.out_dir / f"rank_summary_{self.rank}.json",
        )
        if self.is_rank_0:
            write_json(final, self.out_dir / "final_metrics.json")
            self._append_history(history)
            self.tracker.log_artifact(self.out_dir / "final_metrics.json")
        for line in self._summary_lines(final):
            self.log(line)
        if self.is_rank_0 and self.tracker.ui_command():
            self.log(f"MLflow run {self.run_id}; open the UI with:\n    {self.tracker.ui_command()}")
        return final

    def params_checksum(self) -> float:
        """Sum of all (gathered, fp32) parameters: equal on every rank when training is in sync."""
        from turbo_ds.engine.engine import gathered_parameters

        with gathered_parameters(self.engine) as params:
            return float(sum(p.detach().float().double().sum() for p in params))


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a token-dropout video ViT with DeepSpeed (turbo_ds).")
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("--ds_config", required=True, help="DeepSpeed JSON (see ds_configs/)")
    add_set_flag(p)
    p.add_argument(
        "--resume", default=None, help="'latest' (the run folder's latest checkpoint) or a checkpoint path"
    )
    p.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # passed by the deepspeed launcher
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from turbo_ds.engine import distributed

    # Before the (slow) setup: a scheduler's signal during it still ends in a checkpoint and status 75.
    # Kept until the process group is gone: a launcher that SIGTERMs the ranks still tearing down
    # (deepspeed does once one rank has exited non-zero) must not kill them half way.
    stop = StopRequest(cfg.train.stop_signals).install()
    try:
        trainer = Trainer(cfg, args.ds_config, resume=args.resume, stop_request=stop)
        try:
            final = trainer.fit()
        except Preempted:
            distributed.destroy(verbose=args.debug)  # every rank agreed to stop: wait for all of them
            raise
        distributed.destroy(verbose=args.debug)  # after a barrier: no rank still talks to this one
    finally:
        stop.restore()
    return final


# --------------------------------------------------------------------------- evaluation CLI


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a turbo_ds checkpoint or exported weights on a split.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="DeepSpeed checkpoint folder (with 'latest') or a tag folder")
    src.add_argument("--weights", help="export written by scripts/export.py (.safetensors or .json)")
    p.add_argument(
        "--config", default=None, help="experiment YAML (default: the config stored with the weights)"
    )
    p.add_argument(
        "--ds_config", default=str(Path(__file__).resolve().parents[1] / "ds_configs" / "zero0.json")
    )
    p.add_argument(
        "--split",
        nargs="+",
        default=None,
        help="split(s) to evaluate, e.g. --split val test: the weights are loaded once (default: "
        "data.test_split, else data.val_split)",
    )
    p.add_argument("--clips", type=int, default=None, help="temporal views (default: data.test_clips)")
    p.add_argument("--crops", type=int, default=None, help="spatial views, 1 or 3 (default: data.test_crops)")
    add_set_flag(p)
    p.add_argument("--output_dir", default=None, help="where eval_metrics.json and the MLflow store go")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow weights / checkpoint files that pickle objects beyond tensors (unpickling can run code)",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    add_debug_flag(p)
    return p


def _evaluate_split(
    engine, task, cfg, split: str, specs, rank: int, world: int, out_dir: Path
) -> tuple[dict[str, float], list[str]]:
    """The metrics of every evaluation of ``split`` and the task's summary lines of them.
    One evaluation: ``eval_{split}/...``; several that name their own prefix (long_video's modes):
    ``eval_{their prefix}/...``, so that none overwrites another."""
    prefixes = [f"eval_{s.metric_prefix}" if len(specs) > 1 and s.prefix else f"eval_{split}" for s in specs]
    metrics: dict[str, float] = {}
    for spec, prefix in zip(specs, prefixes, strict=True):
        loader = build_loader(cfg, spec.data, spec.split, rank, world, out_dir)
        metrics.update(
            evaluate(
                engine,
                loader,
                spec.make_evaluator(),
                prefix=prefix,
                batch_keys=spec.batch_keys,
                progress=cfg.train.progress_bar,
            )
        )
        loader.close()
    summary = [
        line for p in dict.fromkeys(prefixes) for line in (task.summary(metrics, p) or "").splitlines()
    ]
    return metrics, summary


def eval_main(argv: list[str] | None = None) -> dict[str, float]:
    """Consolidate weights (any task, ZeRO stage, world size), run the task's evaluations of each split
    asked for with all tokens, print their summaries, write ``eval_{split}_metrics.json`` per split and
    log them all to one MLflow run."""
    from turbo_ds.config import apply_overrides, config_from_dict, upgrade_stored_config
    from turbo_ds.engine import distributed
    from turbo_ds.engine.engine import Engine, resolve_ds_config
    from turbo_ds.engine.export import ENCODER_PREFIX, consolidate, read_export
    from turbo_ds.tasks import build_task, without_weight_files
    from turbo_ds.tracking import create_tracker, write_json

    args = build_eval_parser().parse_args(argv)
    if args.weights:
        data = read_export(args.weights, trust_pickle=args.trust_pickle)
        stored_cfg = data["train_config"]
        prefix = data.get("encoder_prefix", ENCODER_PREFIX)
        sd = data.get("task_state_dict") or {prefix + k: v for k, v in data["state_dict"].items()}
        source = args.weights
    else:
        sd, client = consolidate(args.checkpoint, trust_pickle=args.trust_pickle)
        stored_cfg = client["config"]
        source = args.checkpoint
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(apply_overrides(upgrade_stored_config(stored_cfg), args.overrides))
    # The weights come from the checkpoint: skip pretrained files, the decoder and checkpointing.
    cfg = without_weight_files(cfg)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, activation_checkpointing="none"),
        pmae=dataclasses.replace(cfg.pmae, enabled=False),
        output_dir=args.output_dir or cfg.output_dir,
        data=dataclasses.replace(
            cfg.data,
            test_clips=args.clips or cfg.data.test_clips,
            test_crops=args.crops or cfg.data.test_crops,
        ),
    )
    splits = list(dict.fromkeys(args.split or [cfg.data.test_split or cfg.data.val_split]))
    rank, world = distributed.init_distributed()
    ds = resolve_ds_config(args.ds_config, cfg, world)
    seed_everything(cfg.seed)
    task = build_task(cfg)
    missing, unexpected = task.load_state_dict(
        {k: v for k, v in sd.items() if not k.startswith("model.pmae.")}, strict=False
    )
    if missing or unexpected:
        raise ValueError(
            f"weights from {source} do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    specs_of = {split: task.eval_specs(split) for split in splits}
    for split, specs in specs_of.items():  # every split checked before the first is evaluated
        if not specs:
            raise ValueError(f"task {cfg.task.name!r} has no evaluation for split {split!r}")
    engine = Engine(task, ds, cfg)
    out_dir = Path(cfg.output_dir)
    metrics: dict[str, float] = {}
    for split, specs in specs_of.items():
        split_metrics, summary = _evaluate_split(engine, task, cfg, split, specs, rank, world, out_dir)
        if engine.is_rank_0:
            print(f"[turbo_ds] {source} on split '{split}':", flush=True)
            for line in summary:
                print(f"[turbo_ds]   {line}", flush=True)
            write_json(split_metrics, out_dir / f"eval_{split}_metrics.json")
        metrics.update(split_metrics)
    t = cfg.tracking
    tracker = create_tracker(
        t.enabled,
        engine.is_rank_0,
        out_dir,
        t.experiment,
        f"eval-{Path(source).name}-{'+'.join(splits)}",
        t.tracking_uri,
    )
    tracker.log_params(
        {"eval.source": source, "eval.split": ",".join(splits), "world_size": world, **task.tracking_params()}
    )
    tracker.log_metrics(metrics, step=0)
    tracker.finish()
    distributed.destroy(verbose=args.debug)
    return metrics
