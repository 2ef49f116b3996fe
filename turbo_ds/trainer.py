"""The training loop: config -> data -> task -> engine -> steps, evaluation, checkpoints, MLflow.

One loop for every task: it only sees ``TaskOutput(loss, losses, metrics, batch_size)``. A "step" is an
optimizer step (``optim.grad_accum_steps`` micro batches). ``main(argv)`` is what ``scripts/train.py``
calls, under ``deepspeed``, ``torchrun`` or plain ``python``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from turbo_ds.config import TrainConfig, config_to_dict, flatten, load_config, save_config

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


def num_classes_of(cfg: TrainConfig) -> int:
    if cfg.data.num_classes:
        return cfg.data.num_classes
    from turbo_ds.data import VideoIndex

    n = VideoIndex(cfg.data.index, root=cfg.data.root).num_classes
    return int(n() if callable(n) else n)


def build_loader(cfg: TrainConfig, split: str, kind: str, rank: int, world_size: int, output_dir: Path):
    """kind: "train" (random crops, shuffled), "val" (centre clip + crop), "test" (multi-view)."""
    from turbo_ds.data import build_dataloader

    d = cfg.data
    common = dict(
        root=d.root,
        split=split,
        num_frames=d.num_frames,
        stride=d.frame_stride,
        img_size=d.img_size,
        num_workers=d.num_workers,
        rank=rank,
        world_size=world_size,
        seed=cfg.seed,
        backend=d.backend,
        max_failures=d.max_failures,
        failure_log_dir=output_dir / "data_failures",
        pin_memory=torch.cuda.is_available(),
    )
    eval_bs = d.eval_batch_size or cfg.optim.micro_batch_size
    if kind == "train":
        return build_dataloader(
            d.index, train=True, batch_size=cfg.optim.micro_batch_size, hflip=d.hflip, **common
        )
    if kind == "val":
        return build_dataloader(d.index, train=False, batch_size=eval_bs, **common)
    return build_dataloader(
        d.index,
        train=False,
        batch_size=eval_bs,
        sampler="multiview",
        num_clips=d.test_clips,
        num_crops=d.test_crops,
        **common,
    )


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


@torch.no_grad()
def evaluate(engine, loader, max_batches: int | None = None, prefix: str = "val") -> dict[str, float]:
    """Metrics averaged over every sample of the split on all ranks (weighted by batch size).

    All ranks run the same number of forwards (ZeRO-3 gathers parameters collectively): a rank whose
    share is exhausted repeats its last batch with weight 0.
    """
    was_training = engine.ds.training
    engine.eval()
    n_local = len(loader) if max_batches is None else min(len(loader), max_batches)
    n_batches = int(engine.all_reduce_max(torch.tensor(float(n_local))).item())
    sums: dict[str, float] = {}
    count = 0.0
    last = None
    it = _iterate(loader)
    with rng_untouched():
        for i in range(n_batches):
            batch = next(it, None) if i < n_local else None
            weight = 1.0
            if batch is None:
                batch, weight = last, 0.0
            if batch is None:  # this rank has no samples at all: nothing to run collectively with
                continue
            last = batch
            out = engine(engine.to_device(batch))
            bs = out.batch_size * weight
            values = {"loss": out.loss, **out.losses, **out.metrics}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * bs
            count += bs
    gathered = engine.all_gather_object((sums, count))
    total = sum(c for _, c in gathered)
    keys = sorted({k for s, _ in gathered for k in s})
    result = {f"{prefix}/{k}": sum(s.get(k, 0.0) for s, _ in gathered) / max(total, 1.0) for k in keys}
    result[f"{prefix}/num_samples"] = total
    engine.train(was_training)
    return result


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Builds everything from a resolved config and a ds_config; :meth:`fit` runs the loop."""

    def __init__(self, cfg: TrainConfig, ds_config: str | Path | dict, resume: str | None = None, task=None):
        from turbo_ds.engine import distributed
        from turbo_ds.engine.checkpointing import apply_activation_checkpointing
        from turbo_ds.engine.engine import Engine, resolve_ds_config
        from turbo_ds.tasks import build_task
        from turbo_ds.tracking import create_tracker

        self.cfg = cfg
        self.out_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.out_dir / CHECKPOINT_SUBDIR
        rank, world = distributed.init_distributed()
        self.rank, self.world_size = rank, world
        self.ds_config = resolve_ds_config(ds_config, cfg, world)
        seed_everything(cfg.seed)  # same initial weights on every rank
        self.num_classes = num_classes_of(cfg)
        self.task = task if task is not None else build_task(cfg, self.num_classes)
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
        self.train_loader = build_loader(cfg, cfg.data.train_split, "train", rank, world, self.out_dir)
        self.val_loader = (
            build_loader(cfg, cfg.data.val_split, "val", rank, world, self.out_dir)
            if cfg.data.val_split
            else None
        )

        self.step = 0
        self.epoch = 0
        self.nonfinite_total = 0
        self.run_id = None
        self.train_time_s = 0.0  # time in training steps (not evaluation or checkpointing), this process
        self.train_clips = 0
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
        )
        self.run_id = self.tracker.run_id
        if self.is_rank_0 and self.step == 0:
            self._log_params()

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
        params.update(
            {"world_size": self.world_size, "git_commit": git_commit(), "num_classes": self.num_classes}
        )
        params["num_parameters"] = sum(p.numel() for p in self.task.parameters())
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
                "mlflow_run_id": self.run_id,
                "world_size": self.world_size,
                "config": config_to_dict(self.cfg),
            }
        }

    def save(self) -> Path:
        tag = f"global_step{self.step}"
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

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Iterator[dict[str, Any]]:
        while True:
            self.train_loader.set_epoch(self.epoch)
            yield from _iterate(self.train_loader)
            self.epoch += 1

    def _apply_phase(self) -> None:
        dense_from = self.cfg.train.max_steps - self.cfg.token_dropout.final_dense_steps
        if self.cfg.token_dropout.final_dense_steps and self.step >= dense_from:
            ratio = 0.0
        else:
            ratio = self.cfg.token_dropout.drop_ratio
        model = getattr(self.task, "model", None)
        if model is not None and hasattr(model, "set_drop_ratio"):
            model.set_drop_ratio(ratio)

    def fit(self) -> dict[str, float]:
        cfg, eng = self.cfg, self.engine
        tcfg = cfg.train
        accum = cfg.optim.grad_accum_steps
        clips_per_step = cfg.optim.micro_batch_size * accum * self.world_size
        history: list[dict[str, float]] = []
        self.log(
            f"training {type(self.task).__name__} for {tcfg.max_steps} steps on {self.world_size} rank(s), "
            f"{clips_per_step} clips/step, ds precision {eng.precision}, ZeRO stage "
            f"{self.ds_config.get('zero_optimization', {}).get('stage', 0)}"
        )
        bar = None
        if self.is_rank_0 and tcfg.progress_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=tcfg.max_steps,
                initial=self.step,
                desc="train",
                dynamic_ncols=True,
                file=sys.stdout,
                mininterval=0.5 if sys.stdout.isatty() else 15.0,  # a log file gets a line every 15 s
            )
        eng.train()
        batches = self._batches()
        nonfinite_in_row = 0
        window: dict[str, float] = {}
        window_n = 0
        window_time = 0.0
        window_tokens = 0.0
        last_eval: dict[str, float] = {}
        t_step = time.perf_counter()
        status = "FAILED"
        try:
            while self.step < tcfg.max_steps:
                self._apply_phase()
                lr = eng.lr
                micro = 0
                step_losses: dict[str, float] = {}
                tokens = 0.0
                while micro < accum:
                    batch = next(batches)
                    out = eng(eng.to_device(batch))
                    bad = torch.tensor(0.0 if torch.isfinite(out.loss.detach()).all() else 1.0)
                    if eng.all_reduce_max(bad).item() > 0:
                        # Drop this micro batch on every rank: no backward, no step, DeepSpeed's
                        # accumulation counter does not move; the next batch takes its place.
                        nonfinite_in_row += 1
                        self.nonfinite_total += 1
                        self.log(
                            f"non-finite loss at step {self.step} (skipped; {nonfinite_in_row} in a row, {self.nonfinite_total} total)"
                        )
                        if nonfinite_in_row >= tcfg.max_nonfinite_in_row:
                            raise NonFiniteLossError(
                                f"{nonfinite_in_row} non-finite losses in a row at step {self.step} "
                                f"(train.max_nonfinite_in_row = {tcfg.max_nonfinite_in_row}); last losses: "
                                f"{ {k: float(v.detach()) for k, v in out.losses.items()} }. Lower optim.lr, check the data, "
                                "or use bf16 instead of fp16."
                            )
                        continue
                    nonfinite_in_row = 0
                    eng.backward(out.loss)
                    eng.step()
                    micro += 1
                    tokens += float(out.extras.get("tokens_per_clip", 0)) * out.batch_size
                    for k, v in {"loss": out.loss, **out.losses, **out.metrics}.items():
                        step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / accum
                self.step += 1
                now = time.perf_counter()
                dt, t_step = now - t_step, now
                self.train_time_s += dt
                self.train_clips += clips_per_step
                for k, v in step_losses.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                window_time += dt
                window_tokens += tokens
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{step_losses['loss']:.3f}",
                        clips_s=f"{clips_per_step / max(dt, 1e-9):.1f}",
                        refresh=False,
                    )
                    bar.update(1)

                if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps:
                    keys = sorted(window)
                    vec = eng.all_reduce_mean(
                        torch.tensor([window[k] / window_n for k in keys] + [window_tokens])
                    )
                    rec = {f"train/{k}": float(v) for k, v in zip(keys, vec[:-1].tolist(), strict=True)}
                    tok_all = float(vec[-1]) * self.world_size
                    rec.update(
                        {
                            "train/lr": lr,
                            "train/clips_per_s": clips_per_step * window_n / max(window_time, 1e-9),
                            "train/tokens_per_s": tok_all / max(window_time, 1e-9),
                            "train/step_time_s": window_time / window_n,
                            "train/peak_mem_mb": float(
                                eng.all_reduce_max(torch.tensor(peak_memory_mb(eng.device)))
                            ),
                            "train/nonfinite_total": float(self.nonfinite_total),
                            "train/epoch": float(self.epoch),
                        }
                    )
                    if (g := eng.grad_norm) is not None and math.isfinite(g):
                        rec["train/grad_norm"] = g
                    self.tracker.log_metrics(rec, step=self.step)
                    history.append({"step": self.step, **rec})
                    window, window_n, window_time, window_tokens = {}, 0, 0.0, 0.0
                    t_step = time.perf_counter()

                if (
                    self.val_loader is not None
                    and tcfg.eval_every
                    and self.step % tcfg.eval_every == 0
                    and self.step < tcfg.max_steps
                ):
                    last_eval = evaluate(eng, self.val_loader, tcfg.eval_max_batches)
                    self.tracker.log_metrics(last_eval, step=self.step)
                    self.log(
                        f"step {self.step}: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in last_eval.items() if "top" in k or "loss" in k)
                    )
                    t_step = time.perf_counter()
                every = cfg.checkpoint.every_steps
                if every and self.step % every == 0 and self.step < tcfg.max_steps:
                    self.save()
                    t_step = time.perf_counter()
            if bar is not None:
                bar.close()
                bar = None
            final = self._finish(history, last_eval)
            status = "FINISHED"
            return final
        finally:
            if bar is not None:
                bar.close()
            self.tracker.finish(status)

    def _finish(self, history: list[dict[str, float]], last_eval: dict[str, float]) -> dict[str, float]:
        from turbo_ds.tracking import write_json

        cfg, eng = self.cfg, self.engine
        if cfg.checkpoint.save_final:
            self.save()
        final: dict[str, float] = {"step": float(self.step)}
        if history:
            final.update({k: v for k, v in history[-1].items() if k != "step"})
        if self.val_loader is not None:
            final.update(evaluate(eng, self.val_loader, cfg.train.eval_max_batches))
        if cfg.data.test_split:
            test_loader = build_loader(
                cfg, cfg.data.test_split, "test", self.rank, self.world_size, self.out_dir
            )
            final.update(evaluate(eng, test_loader, cfg.train.eval_max_batches, prefix="test"))
        final["train/nonfinite_total"] = float(self.nonfinite_total)
        final["train/time_s"] = self.train_time_s
        final["train/avg_clips_per_s"] = self.train_clips / max(self.train_time_s, 1e-9)
        final["params_checksum"] = self.params_checksum()
        self.tracker.log_metrics(
            {
                k: v
                for k, v in final.items()
                if k.startswith(("val/", "test/")) or k in ("train/time_s", "train/avg_clips_per_s")
            },
            step=self.step,
        )
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
            with open(self.out_dir / "history.jsonl", "a") as f:
                for rec in history:
                    f.write(json.dumps(rec) + "\n")
            self.tracker.log_artifact(self.out_dir / "final_metrics.json")
        for split in ("val", "test"):
            if f"{split}/top1" in final:
                chance = 100.0 / max(1, self.num_classes)
                self.log(
                    f"{split} top-1 {final[f'{split}/top1']:.2f}% top-5 {final.get(f'{split}/top5', float('nan')):.2f}% (chance {chance:.1f}%) on {int(final[f'{split}/num_samples'])} clips"
                )
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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    p.add_argument(
        "--resume", default=None, help="'latest' (the run folder's latest checkpoint) or a checkpoint path"
    )
    p.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # passed by the deepspeed launcher
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    trainer = Trainer(cfg, args.ds_config, resume=args.resume)
    return trainer.fit()


# --------------------------------------------------------------------------- evaluation CLI


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a turbo_ds checkpoint or exported weights on a split.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="DeepSpeed checkpoint folder (with 'latest') or a tag folder")
    src.add_argument("--weights", help="file written by scripts/export.py")
    p.add_argument(
        "--config", default=None, help="experiment YAML (default: the config stored with the weights)"
    )
    p.add_argument(
        "--ds_config", default=str(Path(__file__).resolve().parents[1] / "ds_configs" / "zero0.json")
    )
    p.add_argument(
        "--split", default=None, help="split to evaluate (default: data.test_split, else data.val_split)"
    )
    p.add_argument("--clips", type=int, default=None, help="temporal views (default: data.test_clips)")
    p.add_argument("--crops", type=int, default=None, help="spatial views, 1 or 3 (default: data.test_crops)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--output_dir", default=None, help="where eval_metrics.json and the MLflow store go")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def eval_main(argv: list[str] | None = None) -> dict[str, float]:
    """Consolidate weights (any ZeRO stage / world size), evaluate with all tokens, print and log."""
    import dataclasses

    from turbo_ds.config import config_from_dict
    from turbo_ds.engine import distributed
    from turbo_ds.engine.engine import Engine, resolve_ds_config
    from turbo_ds.engine.export import ENCODER_PREFIX, consolidate
    from turbo_ds.tasks import build_task
    from turbo_ds.tracking import create_tracker, write_json

    args = build_eval_parser().parse_args(argv)
    if args.weights:
        data = torch.load(args.weights, map_location="cpu", weights_only=False)
        stored_cfg = data["train_config"]
        sd = {ENCODER_PREFIX + k: v for k, v in data["state_dict"].items()}
        num_classes = data["vit_config"]["num_classes"]
        source = args.weights
    else:
        sd, client = consolidate(args.checkpoint)
        stored_cfg = client["config"]
        num_classes = sd[ENCODER_PREFIX + "head.weight"].shape[0]
        source = args.checkpoint
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        from turbo_ds.config import apply_overrides

        cfg = config_from_dict(apply_overrides(stored_cfg, args.overrides))
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, pretrained=None, activation_checkpointing="none"),
        pmae=dataclasses.replace(cfg.pmae, enabled=False),
        output_dir=args.output_dir or cfg.output_dir,
        data=dataclasses.replace(
            cfg.data,
            test_clips=args.clips or cfg.data.test_clips,
            test_crops=args.crops or cfg.data.test_crops,
        ),
    )
    split = args.split or cfg.data.test_split or cfg.data.val_split
    rank, world = distributed.init_distributed()
    ds = resolve_ds_config(args.ds_config, cfg, world)
    task = build_task(cfg, num_classes)
    missing, unexpected = task.load_state_dict(
        {k: v for k, v in sd.items() if not k.startswith("model.pmae.")}, strict=False
    )
    missing = [k for k in missing if not k.startswith("model.pmae.")]
    if missing or unexpected:
        raise ValueError(
            f"weights from {source} do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    engine = Engine(task, ds, cfg)
    out_dir = Path(cfg.output_dir)
    loader = build_loader(cfg, split, "test", rank, world, out_dir)
    views = cfg.data.test_clips * cfg.data.test_crops
    metrics = evaluate(engine, loader, prefix=f"eval_{split}")
    metrics[f"eval_{split}/views"] = float(views)
    if engine.is_rank_0:
        print(
            f"[turbo_ds] {source} on '{split}' ({int(metrics[f'eval_{split}/num_samples'])} videos, {views} view(s)): "
            f"top-1 {metrics.get(f'eval_{split}/top1', float('nan')):.2f}% top-5 {metrics.get(f'eval_{split}/top5', float('nan')):.2f}%",
            flush=True,
        )
        write_json(metrics, out_dir / f"eval_{split}_metrics.json")
    t = cfg.tracking
    tracker = create_tracker(
        t.enabled,
        engine.is_rank_0,
        out_dir,
        t.experiment,
        f"eval-{Path(source).name}-{split}",
        t.tracking_uri,
    )
    tracker.log_params({"eval.source": source, "eval.split": split, "eval.views": views, "world_size": world})
    tracker.log_metrics(metrics, step=0)
    tracker.finish()
    return metrics
