"""The training loop: :meth:`Trainer.fit` is the algorithm; evaluation, checkpoints, the logging window,
memory, stop requests and the watchdog are components that decide when to act.

One loop for every task: it only sees ``TaskOutput(loss, losses, metrics, batch_size)``. A "step" is an
optimizer step (``optim.grad_accum_steps`` micro batches).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from turbo_ds import tracking
from turbo_ds.cli import Preempted
from turbo_ds.config import TrainConfig, config_to_dict, flatten, save_config
from turbo_ds.loop.checkpoint import Checkpointer
from turbo_ds.loop.data import EpochBatches, build_loader, report_data_failures
from turbo_ds.loop.evaluation import Evaluations
from turbo_ds.loop.memory import FirstStepMemory
from turbo_ds.loop.metrics import LoggingWindow
from turbo_ds.loop.preemption import StopRequest
from turbo_ds.loop.progress import TrainingBar
from turbo_ds.loop.rng import rng_state, seed_everything, set_rng_state
from turbo_ds.loop.setup import setup
from turbo_ds.loop.watchdog import StallWatchdog


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_nonfinite_in_row`` consecutive non-finite losses."""


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
        s = setup(cfg, ds_config, task)
        self.cfg = cfg = s.cfg
        self.ds_config, self.task, self.engine = s.ds_config, s.task, s.engine
        self.rank, self.world_size = s.rank, s.world_size
        self.out_dir = Path(cfg.output_dir)
        self.train_loader = build_loader(
            cfg, self.task.train_data(), cfg.data.train_split, self.rank, self.world_size, self.out_dir
        )
        self.decoder = self.train_loader.decoder  # resolved once per process; eval loaders reuse it
        self.batches = EpochBatches(self.train_loader, self._end_of_epoch)
        self.watchdog = StallWatchdog(cfg.train.stall_timeout_s, self.rank)  # started by fit()
        self.evaluations = Evaluations(self.task, cfg, self.engine, self.out_dir, self.watchdog.beat)
        self.checkpointer = Checkpointer(self.engine, cfg, self.watchdog.beat, self.log)
        self.stop_request = stop_request
        self.clips_per_step = cfg.optim.micro_batch_size * cfg.optim.grad_accum_steps * self.world_size
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self.run_id = None
        self.train_time_s = 0.0  # time in training steps (not evaluation or checkpointing), whole run
        self.train_clips = 0
        self._drop_ratio: float | None = None  # the token dropout ratio last set on the task
        # Token dropout / drop path differ per rank; they are seeded from (seed, rank).
        seed_everything(cfg.seed + 1000003 * (self.rank + 1))
        if resume:
            self._resume(resume)
        self.window = LoggingWindow(
            self.engine, cfg, self.train_loader, self.decoder.backend, self.log, first_step=self.step
        )
        if self.is_rank_0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            with open(self.out_dir / "ds_config.json", "w") as f:
                json.dump(self.ds_config, f, indent=2)
        self.tracker = self._create_tracker()
        self.run_id = self.tracker.run_id
        self.first_step_memory = FirstStepMemory(
            cfg.tracking.memory_plan, self.engine, cfg, self.ds_config, self.tracker, self.log
        )
        self.log(self.decoder.line())
        if self.is_rank_0 and self.step == 0:
            self._log_params()
        elif self.step > 0:
            self.tracker.set_tags({tracking.RESUMED_AT_STEP_TAG: self.step})

    @property
    def is_rank_0(self) -> bool:
        return self.engine.is_rank_0

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def log(self, msg: str) -> None:
        if self.is_rank_0:
            print(f"[turbo_ds] {msg}", flush=True)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train to ``train.max_steps``, then evaluate and write the run's results (returned); raises
        :class:`~turbo_ds.cli.Preempted` once every rank has saved after a stop request."""
        self.log(self._start_line())
        stop = self.stop_request or StopRequest(self.cfg.train.stop_signals).install()
        bar = TrainingBar(self.is_rank_0 and self.cfg.train.progress_bar, self.cfg.train.max_steps, self.step)
        history: list[dict[str, float]] = []
        status = "FAILED"
        self.engine.train()
        self.watchdog.start()
        try:
            clock = time.perf_counter()
            while self.step < self.cfg.train.max_steps:
                self.watchdog.beat("the other ranks at the step boundary (the stop-request all-reduce)")
                if (signal_name := stop.agreed(self.engine)) is not None:
                    if self.window:  # the steps since the last record are not lost from the history
                        history.append(self._record_window())
                    status = "KILLED"  # MLflow's word for a run stopped from outside
                    raise self._stop_for(signal_name, history)
                lr = self.engine.lr
                with self.first_step_memory.measure():
                    values = self.train_steps(1)
                seconds = time.perf_counter() - clock
                self.train_time_s += seconds
                self.train_clips += self.clips_per_step
                self.window.add(values, seconds, lr)
                bar.update(
                    values["loss"], self.clips_per_step / max(seconds, 1e-9), self.window.data_wait_frac
                )
                if self.window.due(self.step):
                    history.append(self._record_window())
                if self.evaluations.due(self.step):
                    self._log_eval(self.evaluations.run(during_training=True))
                if self.checkpointer.due(self.step):
                    self.save()
                clock = time.perf_counter()  # records, evaluations and checkpoints are not step time
            bar.close()
            final = self._finish(history)
            status = "FINISHED"
            return final
        finally:
            # Teardown in order: the loaders' worker processes, then the MLflow run (the process
            # group goes last, in main, once every rank is here).
            self.watchdog.stop()
            if self.stop_request is None:
                stop.restore()
            self.batches.close()
            self.close_loaders()
            bar.close()
            self.tracker.finish(status)

    def train_steps(self, n: int) -> dict[str, float]:
        """``n`` optimizer steps (the token-dropout phase of each applied), nothing else: no evaluation,
        checkpoint or record. Returns the mean of the steps' losses and metrics. The batches go on
        across calls (the first is fetched in the first call); the steps' data wait and tokens go into
        the logging window."""
        total: dict[str, float] = {}
        for _ in range(n):
            self._apply_phase()
            for k, v in self._train_step().items():
                total[k] = total.get(k, 0.0) + v
            self.step += 1
        return {k: v / n for k, v in total.items()}

    def _apply_phase(self) -> None:
        dense_from = self.cfg.train.max_steps - self.cfg.token_dropout.final_dense_steps
        if self.cfg.token_dropout.final_dense_steps and self.step >= dense_from:
            ratio = 0.0
        else:
            ratio = self.cfg.token_dropout.drop_ratio
        if ratio != self._drop_ratio:  # set_drop_ratio walks the task's modules: only on a change
            self.task.set_drop_ratio(ratio)
            self._drop_ratio = ratio

    def _train_step(self) -> dict[str, float]:
        """One optimizer step (``optim.grad_accum_steps`` finite micro batches): its mean values."""
        accum = self.cfg.optim.grad_accum_steps
        values: dict[str, float] = {}
        micro = 0
        workers = self.cfg.data.num_workers
        while micro < accum:
            self.watchdog.beat(f"the next training batch from the DataLoader ({workers} worker(s) per rank)")
            t_wait = time.perf_counter()
            batch = next(self.batches)
            self.window.data_wait_s += time.perf_counter() - t_wait
            self.watchdog.beat(
                f"step {self.step + 1}'s forward, backward and optimizer step (collectives with all "
                f"{self.world_size} rank(s))"
            )
            out = self._micro_step(batch)
            if out is None:
                continue
            micro += 1
            self.window.tokens += float(out.extras.get("tokens_per_clip", 0)) * out.batch_size
            for k, v in {"loss": out.loss, **out.losses, **out.metrics}.items():
                values[k] = values.get(k, 0.0) + float(v.detach()) / accum
        return values

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

    def _end_of_epoch(self, epoch: int) -> None:
        # A collective, safe here: the training sampler gives every rank the same number of
        # batches (drop_last), so all ranks finish an epoch at the same micro step.
        self.watchdog.beat(
            f"the other ranks at the end of epoch {epoch} (the data-failure report's all-gather)"
        )
        self._report_data_failures(final=False)

    def _report_data_failures(self, final: bool) -> int:
        loaders = [self.train_loader, *self.evaluations.loaders]
        return report_data_failures(self.engine, self.tracker, loaders, self.step, final, self.log)

    def _start_line(self) -> str:
        stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        return (
            f"training {type(self.task).__name__} for {self.cfg.train.max_steps} steps on {self.world_size} "
            f"rank(s), {self.clips_per_step} clips/step, ds precision {self.engine.precision}, ZeRO stage {stage}"
        )

    def _record_window(self) -> dict[str, float]:
        """The logging window's record, logged; its history entry returned."""
        rec = self.window.record(self.step, self.epoch, self.nonfinite_total)
        self.tracker.log_metrics(rec, step=self.step)
        return {"step": self.step, **rec}

    def _log_eval(self, metrics: dict[str, float]) -> None:
        self._record_eval(metrics)
        headline = [f"{k} {v:.4g}" for k, v in metrics.items() if k.split("/", 1)[-1] in self.task.headline]
        self.log(f"step {self.step}: " + ", ".join(headline))

    def _record_eval(self, metrics: dict[str, float]) -> None:
        """Log one evaluation with the training time so far (quality against wall-clock time:
        ``evals.jsonl`` in the run folder, and ``train/time_s`` in MLflow at the same step)."""
        timed = {**metrics, "train/time_s": self.train_time_s}
        self.tracker.log_metrics(timed, step=self.step)
        if self.is_rank_0:
            tracking.append_jsonl({"step": self.step, **timed}, self.out_dir / "evals.jsonl")

    # ------------------------------------------------------------------ state and checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The loop's resumable state, as a checkpoint's client state carries it (rank 0's): the step,
        epoch and data position, the run's counters, its MLflow run, world size and config."""
        return {
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

    def rank_state_dict(self) -> dict[str, Any]:
        """What differs per rank: its RNG states and its data position."""
        return {"rng": rng_state(), "data": self.train_loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any] | None = None) -> None:
        """:meth:`state_dict` and (if the checkpoint has one for this rank) :meth:`rank_state_dict`."""
        self.step, self.batches.epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
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

    def save(self) -> Path:
        return self.checkpointer.save(self.step, {"turbo_ds": self.state_dict()}, self.rank_state_dict())

    def _resume(self, resume: str) -> None:
        if (loaded := self.checkpointer.load(resume)) is None:
            return
        client, rank_state, path = loaded
        self.load_state_dict(client.get("turbo_ds", {}), rank_state)
        self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch})")

    # ------------------------------------------------------------------ tracking and the end of a run
    def _create_tracker(self):
        t = self.cfg.tracking
        tracker = tracking.create_tracker(
            t.enabled,
            self.is_rank_0,
            self.out_dir,
            t.experiment,
            t.run_name,
            t.tracking_uri,
            run_id=self.run_id,
            system_metrics_interval_s=t.system_metrics_interval_s if t.system_metrics else None,
        )
        # Again on a resume: tags are mutable, and a run resumed under new tags should carry them.
        headline = self._headline_tag(self.evaluations.headline_metrics())
        tracker.set_tags({**t.tags, tracking.TASK_TAG: self.cfg.task.name, **headline})
        return tracker

    @staticmethod
    def _headline_tag(names: list[str]) -> dict[str, str]:
        return {tracking.HEADLINE_TAG: ",".join(names)}

    def _log_params(self) -> None:
        params = flatten(config_to_dict(self.cfg))
        params.update({f"ds.{k}": v for k, v in flatten(self.ds_config).items()})
        params.update(tracking.library_versions())
        params.update({"world_size": self.world_size, "git_commit": tracking.git_commit()})
        params.update(self.task.tracking_params())
        params["data.backend_resolved"] = self.decoder.backend
        params["num_parameters"] = sum(p.numel() for p in self.task.parameters())
        params["num_trainable_parameters"] = sum(p.numel() for p in self.task.parameters() if p.requires_grad)
        self.tracker.log_params(params)
        self.tracker.log_artifact(self.out_dir / "config.yaml")
        self.tracker.log_artifact(self.out_dir / "ds_config.json")

    def _stop_for(self, signal_name: str, history: list[dict[str, float]]) -> Preempted:
        """Every rank agreed to stop (a scheduler's signal): save, record, and say how to go on."""
        path = self.save()
        if self.is_rank_0:
            self._append_history(history)
        self.tracker.set_tags({tracking.STOPPED_BY_TAG: signal_name, tracking.STOPPED_AT_STEP_TAG: self.step})
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
        for loader in [self.train_loader, *self.evaluations.loaders]:
            loader.close()

    def _finish(self, history: list[dict[str, float]]) -> dict[str, float]:
        if self.cfg.checkpoint.save_final:
            self.save()
        final: dict[str, float] = {"step": float(self.step)}
        if history:
            final.update({k: v for k, v in history[-1].items() if k != "step"})
        evals = self.evaluations.run(during_training=False)
        final.update(evals)
        self._record_eval(evals)
        final["train/nonfinite_total"] = float(self.nonfinite_total)
        final["data/failed_videos"] = float(self._report_data_failures(final=True))
        final["train/time_s"] = self.train_time_s
        final["train/avg_clips_per_s"] = self.train_clips / max(self.train_time_s, 1e-9)
        final["params_checksum"] = self.params_checksum()
        self.tracker.log_metrics({"train/avg_clips_per_s": final["train/avg_clips_per_s"]}, step=self.step)
        if headline := self.evaluations.headline_metrics(available=final):
            # The start's guess was every prefix x every headline name; some pairs never exist
            # (video_text: retrieval names under the alignment prefix).
            self.tracker.set_tags(self._headline_tag(headline))
        losses = [rec["train/loss"] for rec in history if "train/loss" in rec]
        tracking.write_json(
            {
                "rank": self.rank,
                "params_checksum": final["params_checksum"],
                "train_loss": losses,
                "steps": [rec["step"] for rec in history],
            },
            self.out_dir / f"rank_summary_{self.rank}.json",
        )
        if self.is_rank_0:
            tracking.write_json(final, self.out_dir / "final_metrics.json")
            self._append_history(history)
            self.tracker.log_artifact(self.out_dir / "final_metrics.json")
        for line in self.evaluations.summary_lines(final):
            self.log(line)
        if self.is_rank_0 and self.tracker.ui_command():
            self.log(f"MLflow run {self.run_id}; open the UI with:\n    {self.tracker.ui_command()}")
        return final

    def params_checksum(self) -> float:
        """Sum of all (gathered, fp32) parameters: equal on every rank when training is in sync."""
        from turbo_ds.engine.engine import gathered_parameters

        with gathered_parameters(self.engine) as params:
            return float(sum(p.detach().float().double().sum() for p in params))
