"""DeepSpeed config resolution: fill ``"auto"`` fields from the trainer config, check the batch identity.

One owner per setting: the ds_config owns ZeRO stage, offload and precision; the trainer config owns
batch sizes, learning rate, AdamW hyper-parameters and clipping. Those are written ``"auto"`` in the
shipped ds_configs. An explicit value that disagrees with the trainer config is an error, and all
disagreements are reported in one ``ValueError`` (as accelerate does).

``bf16.enabled: "auto"`` resolves to bf16 on an accelerator that supports it (CUDA Ampere+) and to
fp32 on the CPU, so one ds_config runs in CI and on the cluster. This module imports no deepspeed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from turbo_ds.config import TrainConfig

AUTO = "auto"


def load_ds_config(path_or_dict: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read a ds_config JSON file (or copy a dict)."""
    if isinstance(path_or_dict, dict):
        return copy.deepcopy(path_or_dict)
    with open(path_or_dict) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"ds_config {path_or_dict} must be a JSON object")
    return data


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


def fill_ds_config(
    ds_config: str | Path | dict[str, Any],
    cfg: TrainConfig,
    world_size: int,
    bf16_supported: bool = False,
) -> dict[str, Any]:
    """Return a resolved copy of ``ds_config`` with every ``"auto"`` filled from ``cfg``.

    Raises one ``ValueError`` listing every explicit value that disagrees with the trainer config, and
    checks ``train_batch_size == micro x accumulation x world``.
    """
    ds = load_ds_config(ds_config)
    o = cfg.optim
    micro, accum = o.micro_batch_size, o.grad_accum_steps
    expected = {
        ("train_micro_batch_size_per_gpu",): (micro, "optim.micro_batch_size"),
        ("gradient_accumulation_steps",): (accum, "optim.grad_accum_steps"),
        ("gradient_clipping",): (o.grad_clip, "optim.grad_clip"),
    }
    train_batch = micro * accum * world_size
    expected[("train_batch_size",)] = (
        train_batch,
        f"optim.micro_batch_size x optim.grad_accum_steps x world ({micro} x {accum} x {world_size})",
    )
    if "optimizer" in ds:
        opt = ds["optimizer"]
        if str(opt.get("type", "")).lower() not in ("adamw", "adam"):
            raise ValueError(
                f"ds_config optimizer.type = {opt.get('type')!r}: turbo_ds builds AdamW parameter groups; use AdamW"
            )
        opt.setdefault("params", {})
        expected.update(
            {
                ("optimizer", "params", "lr"): (o.lr, "optim.lr"),
                ("optimizer", "params", "betas"): (list(o.betas), "optim.betas"),
                ("optimizer", "params", "eps"): (o.eps, "optim.eps"),
                ("optimizer", "params", "weight_decay"): (o.weight_decay, "optim.weight_decay"),
            }
        )
    if "scheduler" in ds:
        raise ValueError(
            "ds_config has a 'scheduler' section: the schedule is owned by the trainer config (optim.warmup_steps, optim.lr, optim.min_lr); remove it"
        )

    mismatches = []
    for path, (value, source) in expected.items():
        node = ds
        for p in path[:-1]:
            node = node.setdefault(p, {})
        key = path[-1]
        current = node.get(key, AUTO)
        if current == AUTO:
            node[key] = value
        elif not _close(current, value):
            mismatches.append(f"  ds_config {'.'.join(path)} = {current!r} but {source} = {value!r}")
    if (global_batch := o.global_batch_size) and global_batch != train_batch:
        mismatches.append(
            f"  optim.global_batch_size = {global_batch} but micro x accumulation x world = {micro} x {accum} x {world_size} = {train_batch}"
        )
    if mismatches:
        raise ValueError(
            'ds_config disagrees with the trainer config (set these ds_config fields to "auto" or make them equal):\n'
            + "\n".join(mismatches)
        )

    for prec in ("bf16", "fp16"):
        sec = ds.get(prec)
        if isinstance(sec, dict) and sec.get("enabled") == AUTO:
            sec["enabled"] = bool(bf16_supported) if prec == "bf16" else False
    if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
        raise ValueError("ds_config enables both bf16 and fp16; choose one")
    leftover = [k for k, v in _walk(ds) if v == AUTO]
    if leftover:
        raise ValueError(f"ds_config fields left 'auto' that turbo_ds does not fill: {', '.join(leftover)}")
    return ds


def _walk(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], d


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict[str, Any]) -> bool:
    dev = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return dev not in (None, "none")


def precision(ds: dict[str, Any]) -> str:
    """'bf16', 'fp16' or 'fp32' for a resolved ds_config."""
    if ds.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"
