"""DeepSpeed behind one class. The loop calls only ``engine(batch)``, ``backward``, ``step``, ``save``,
``load``, ``is_rank_0`` and ``all_reduce_mean``; models and tasks never import deepspeed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import deepspeed
import deepspeed.comm as dist
import numpy as np
import torch
from torch import nn

from turbo_ds.config import TrainConfig
from turbo_ds.engine import distributed
from turbo_ds.engine.ds_config import fill_ds_config, offloads_optimizer, precision, zero_stage
from turbo_ds.engine.optim import WarmupCosineSchedule, param_groups

LATEST = "latest"


class Engine:
    """A task wrapped by ``deepspeed.initialize`` with our AdamW groups and warmup-cosine schedule.

    Build with :meth:`Engine.create`. ``ds_config`` is the resolved config (every "auto" filled).
    """

    def __init__(self, module: nn.Module, ds_config: dict[str, Any], cfg: TrainConfig):
        self.ds_config = ds_config
        self.cfg = cfg
        o = cfg.optim
        groups = param_groups(module, o.weight_decay, o.layer_decay)

        def make_schedule(optimizer):
            self.schedule = WarmupCosineSchedule(
                optimizer, o.lr, o.min_lr, o.warmup_steps, cfg.train.max_steps
            )
            return self.schedule

        self.schedule: WarmupCosineSchedule | None = None
        # DeepSpeed would take device LOCAL_RANK; device_rank tells it the one init_distributed chose
        # (on the CPU, where the index means nothing, the local rank as DeepSpeed would).
        dev = distributed.device()
        args = SimpleNamespace(device_rank=dev.index if dev.type == "cuda" else distributed.env_local_rank())
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            args=args, model=module, model_parameters=groups, config=ds_config, lr_scheduler=make_schedule
        )
        self.module = self.ds.module
        self.device = self.ds.device
        self.precision = precision(ds_config)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        module: nn.Module,
        cfg: TrainConfig,
        ds_config: str | Path | dict[str, Any],
    ) -> Engine:
        """Initialise distributed (if needed), resolve the ds_config against ``cfg``, wrap ``module``.

        (The trainer does these steps itself so it can configure activation checkpointing from the
        resolved ds_config before wrapping.)
        """
        distributed.init_distributed()
        resolved = resolve_ds_config(ds_config, cfg, dist.get_world_size())
        return cls(module, resolved, cfg)

    # ------------------------------------------------------------------ ranks
    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def is_rank_0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over ranks (a new tensor on the engine's device)."""
        t = tensor.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        t = (
            tensor.detach()
            .to(self.device, torch.float64 if tensor.dtype == torch.float64 else torch.float32)
            .clone()
        )
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        t = tensor.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------ training
    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move tensors to the device; floating tensors take the engine's precision."""
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            out[k] = v
        return out

    def __call__(self, batch: dict[str, Any]) -> Any:
        # Every module is entered through forward and returns dicts/tensors, so ZeRO-3's own hooks
        # gather (and release) each module's parameters, forward and backward.
        return self.ds(batch)

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def eval(self) -> None:
        self.ds.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro batch (DeepSpeed scales by 1 / gradient_accumulation_steps)."""
        self.ds.backward(loss)

    def step(self) -> bool:
        """Call after every micro batch; returns True when an optimizer step happened."""
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.step()
        return boundary

    @property
    def lr(self) -> float:
        """Peak (un-scaled) learning rate of the next optimizer step."""
        return self.schedule.current_lr() if self.schedule is not None else float("nan")

    @property
    def grad_norm(self) -> float | None:
        g = self.ds.get_global_grad_norm()
        return None if g is None else float(g)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps DeepSpeed skipped (fp16 overflow)."""
        return int(self.ds.skipped_steps)

    # ------------------------------------------------------------------ checkpoints
    def save(
        self,
        save_dir: str | Path,
        tag: str,
        client_state: dict[str, Any],
        rank_state: dict[str, Any] | None = None,
    ) -> Path:
        """Save a DeepSpeed checkpoint ``save_dir/tag`` with ``client_state`` (and per-rank ``rank_state``).

        ``save_dir/latest`` is rewritten atomically by rank 0 only after every rank has finished
        writing, so an interrupted save never becomes the resume point.
        """
        save_dir = Path(save_dir)
        self.ds.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)
        if rank_state is not None:
            torch.save(to_plain(rank_state), save_dir / tag / f"rank_state_{self.rank:05d}.pt")
        self.barrier()
        if self.is_rank_0:
            tmp = save_dir / f".{LATEST}.tmp"
            with open(tmp, "w") as f:
                f.write(tag)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, save_dir / LATEST)
        self.barrier()
        return save_dir / tag

    def load(
        self, load_dir: str | Path, tag: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load model, optimizer and schedule state; returns (client_state, this rank's rank_state or None).

        ``load_dir`` is a checkpoint folder (tag read from ``latest``) or a tag folder itself.
        """
        load_dir = Path(load_dir)
        universal = bool(self.ds_config.get("checkpoint", {}).get("load_universal", False))
        if (
            tag is None
            and not (load_dir / LATEST).exists()
            and not (universal and (load_dir / "latest_universal").exists())
        ):
            load_dir, tag = load_dir.parent, load_dir.name
        path, client_state = self.ds.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint found under {load_dir} (tag={tag})")
        tag_dir = Path(path) if Path(path).is_dir() else Path(path).parent
        rank_file = tag_dir / f"rank_state_{self.rank:05d}.pt"
        rank_state = load_rank_state(rank_file) if rank_file.exists() and not universal else None
        return client_state or {}, rank_state


# ---------------------------------------------------------------------- per-rank state, without pickle
_NDARRAY = "__ndarray__"


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays / scalars replaced by plain lists / numbers, so that the file loads with
    ``torch.load(weights_only=True)`` (tensors, dicts, lists, tuples, numbers and strings only)."""
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain` (arrays come back with their dtype and shape, bit for bit)."""
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            return np.array(obj[_NDARRAY], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def load_rank_state(path: str | Path) -> dict[str, Any]:
    """A rank's RNG and loader state, read with ``weights_only=True`` (no code runs). Files written before
    :func:`to_plain` hold numpy arrays and scalars: those numpy globals, and nothing else, are allowed."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / 1
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.bool_)]
    allowed = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]
    with torch.serialization.safe_globals(allowed):
        return from_plain(torch.load(path, map_location="cpu", weights_only=True))


def resolve_ds_config(
    ds_config: str | Path | dict[str, Any], cfg: TrainConfig, world_size: int
) -> dict[str, Any]:
    """``fill_ds_config`` plus the settings that depend on the machine."""
    resolved = fill_ds_config(ds_config, cfg, world_size, bf16_supported=distributed.bf16_supported())
    on_cuda = distributed.device().type == "cuda"
    if "optimizer" in resolved and not on_cuda and not offloads_optimizer(resolved):
        # FusedAdam is a CUDA kernel; on the CPU use torch's AdamW (same update).
        resolved["optimizer"]["params"].setdefault("torch_adam", True)
    if cfg.checkpoint.load_universal:
        resolved.setdefault("checkpoint", {})["load_universal"] = True
    if zero_stage(resolved) == 0 and resolved.get("zero_optimization", {}).get("offload_optimizer"):
        raise ValueError("ds_config offloads the optimizer at ZeRO stage 0; offload needs stage >= 1")
    return resolved


@contextlib.contextmanager
def gathered_parameters(engine: Engine):
    """Yield the module's full parameters (gathered from their ZeRO-3 partitions when needed)."""
    params = list(engine.module.parameters())
    if zero_stage(engine.ds_config) == 3:
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield params
    else:
        yield params
