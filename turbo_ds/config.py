"""Typed training configuration: dataclass sections, YAML + ``--set a.b=c`` overrides, validation.

A config file is YAML whose top-level keys are the sections of :class:`TrainConfig`. Every key must
exist in its section (a typo is an error, not a silent default), every value is type-checked and
range-checked in ``__post_init__``, and every error names the dotted key and the bad value::

    cfg = load_config("configs/demo_classification.yaml", ["optim.lr=3e-4", "token_dropout.drop_ratio=0.5"])
    save_config(cfg, "runs/demo/config.yaml")   # the resolved config, written to the run folder

This module imports nothing heavy (no torch, no deepspeed), so scripts can validate configs fast.
PyYAML is imported only where YAML is read or written (``load_config``, ``--set`` values,
``save_config``): the dataclasses, ``config_from_dict`` and the checks work with the standard library
alone (e.g. on a GPU machine that has torch and nothing else; see ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo_ds.signals import signal_number


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or an invalid value."""


def _yaml() -> Any:
    """PyYAML, imported on first use; a clear error where it is not installed."""
    try:
        import yaml
    except ImportError as e:
        raise ImportError(
            "reading or writing YAML configs needs PyYAML (pip install pyyaml; on a machine without it, "
            "`make gpu-bundle` puts its pure-Python part into .gpu_deps/ for PYTHONPATH)"
        ) from e
    return yaml


def _check(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}' = {value!r}: {why}")


@dataclass
class ModelConfig:
    """Which VideoViT to build (see ``turbo_ds.models.create_model``)."""

    name: str = "vit_debug"
    """Registered model preset: vit_debug, vit_small_patch16, vit_base_patch16, vit_large_patch16."""
    img_size: int | None = None
    """Input height/width; None keeps the preset's value."""
    num_frames: int | None = None
    """Frames per clip; None keeps the preset's value (must match ``data.num_frames``)."""
    drop_path_rate: float = 0.0
    """Stochastic depth rate."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Any other ``ViTConfig`` field, e.g. ``{pool: mean, pos_embed: sincos}``."""
    pretrained: str | None = None
    """Path to pretrained weights (VideoMAE / timm / open_clip / our export), loaded before training."""
    pretrained_format: str = "auto"
    """Format of ``pretrained``: auto, videomae, timm, open_clip, turbo_ds."""
    pretrained_trust_pickle: bool = False
    """Allow a ``pretrained`` file that pickles objects beyond tensors (e.g. VideoMAE's checkpoints with
    their argparse namespace). Unpickling can run any code: only for files you trust. Without it such a
    file is refused; safetensors and plain tensor files never need it."""
    inflation: str = "center"
    """How 2D patch weights are inflated to tubelets: center or average."""
    activation_checkpointing: str = "none"
    """none, torch, deepspeed (configured from the ds_config's activation_checkpointing) or fairscale."""
    checkpoint_num_blocks: int = -1
    """How many transformer blocks to checkpoint (-1 = all)."""

    def __post_init__(self) -> None:
        _check(
            self.drop_path_rate >= 0 and self.drop_path_rate < 1,
            "model.drop_path_rate",
            self.drop_path_rate,
            "must be in [0, 1)",
        )
        _check(
            self.pretrained_format in ("auto", "videomae", "timm", "open_clip", "turbo_ds"),
            "model.pretrained_format",
            self.pretrained_format,
            "must be auto, videomae, timm, open_clip or turbo_ds",
        )
        _check(
            self.inflation in ("center", "average"),
            "model.inflation",
            self.inflation,
            "must be center or average",
        )
        _check(
            self.activation_checkpointing in ("none", "torch", "deepspeed", "fairscale"),
            "model.activation_checkpointing",
            self.activation_checkpointing,
            "must be none, torch, deepspeed or fairscale",
        )
        _check(
            self.checkpoint_num_blocks >= -1,
            "model.checkpoint_num_blocks",
            self.checkpoint_num_blocks,
            "must be -1 (all) or >= 0",
        )


@dataclass
class TokenDropoutConfig:
    """Token dropout during training (evaluation always sees all tokens)."""

    drop_ratio: float = 0.0
    """Fraction of patch tokens dropped per clip in training (0 = dense)."""
    strategy: str = "random"
    """random, tube (same spatial positions in every frame) or frame_uniform."""
    final_dense_steps: int = 0
    """Last N optimizer steps run at drop ratio 0 (FLIP-style unmasked tuning); 0 = off."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.drop_ratio < 1.0, "token_dropout.drop_ratio", self.drop_ratio, "must be in [0, 1)")
        _check(
            self.strategy in ("random", "tube", "frame_uniform"),
            "token_dropout.strategy",
            self.strategy,
            "must be random, tube or frame_uniform",
        )
        _check(
            self.final_dense_steps >= 0,
            "token_dropout.final_dense_steps",
            self.final_dense_steps,
            "must be >= 0",
        )


@dataclass
class PMAEConfig:
    """Partial-MAE auxiliary reconstruction of a fraction of the dropped tokens."""

    enabled: bool = False
    """Build the Partial-MAE decoder (its loss is weighted by ``task.mae_weight``)."""
    pmae_ratio: float = 0.25
    """Fraction of the dropped tokens reconstructed."""
    decoder_dim: int | None = None
    """Decoder width; None uses the model core's default."""
    decoder_depth: int | None = None
    """Decoder blocks; None uses the model core's default."""
    decoder_heads: int | None = None
    """Decoder heads; None uses the model core's default."""
    norm_pix_loss: bool = True
    """Normalise target pixels per patch (MAE's norm_pix_loss)."""

    def __post_init__(self) -> None:
        _check(0.0 < self.pmae_ratio <= 1.0, "pmae.pmae_ratio", self.pmae_ratio, "must be in (0, 1]")
        for k in ("decoder_dim", "decoder_depth", "decoder_heads"):
            v = getattr(self, k)
            _check(v is None or v > 0, f"pmae.{k}", v, "must be > 0 or null")


@dataclass
class DataConfig:
    """Where the clips come from and how they are sampled (see ``turbo_ds.data.build_dataloader``)."""

    index: str = "demo_data/index.parquet"
    """Parquet index (file or folder) built by ``python -m data_index``."""
    root: str | None = None
    """Folder the index's relative paths resolve against; None = the index's folder."""
    train_split: str = "train"
    """Split used for training."""
    val_split: str = "val"
    """Split evaluated every ``train.eval_every`` steps."""
    test_split: str | None = None
    """Split evaluated at the end with ``test_clips`` x ``test_crops`` views; None = skip."""
    num_frames: int = 8
    """Frames per clip."""
    frame_stride: int = 2
    """Stride between sampled frames."""
    img_size: int = 32
    """Crop size."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    eval_batch_size: int | None = None
    """Per-rank evaluation batch size; None = ``optim.micro_batch_size``."""
    test_clips: int = 1
    """Temporal clips per video in test evaluation (predictions averaged over clips x crops)."""
    test_crops: int = 1
    """Spatial crops per clip in test evaluation: 1 (centre) or 3."""
    hflip: float = 0.0
    """Horizontal flip probability in training (0 for direction-sensitive labels, e.g. SSv2)."""
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    """Training random-resized-crop area range (fraction of the frame)."""
    backend: str = "auto"
    """Video decoder: auto (the fastest that decodes here, logged), torchcodec, decord or pyav; a video
    a fast backend fails on is decoded by PyAV (docs/decoding.md)."""
    decode_device: str = "cpu"
    """Where videos decode: cpu, or cuda (torchcodec's GPU decoder, transforms on the GPU too; needs
    num_workers: 0, since DataLoader workers cannot use CUDA; a machine without CUDA is an error)."""
    decode_once: bool = True
    """Decode a batch's clips of one video in one call (one open, the union of their frames in one sorted
    pass: group_by_video training, caption evaluation); false decodes clip by clip, the same clips."""
    max_failures: int = 100
    """Broken videos tolerated before the run stops."""

    def __post_init__(self) -> None:
        _check(bool(self.index), "data.index", self.index, "must be a path")
        _check(self.num_frames > 0, "data.num_frames", self.num_frames, "must be > 0")
        _check(self.frame_stride > 0, "data.frame_stride", self.frame_stride, "must be > 0")
        _check(self.img_size > 0, "data.img_size", self.img_size, "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _check(
            self.eval_batch_size is None or self.eval_batch_size > 0,
            "data.eval_batch_size",
            self.eval_batch_size,
            "must be > 0",
        )
        _check(self.test_clips >= 1, "data.test_clips", self.test_clips, "must be >= 1")
        _check(self.test_crops in (1, 3), "data.test_crops", self.test_crops, "must be 1 or 3")
        _check(0.0 <= self.hflip <= 1.0, "data.hflip", self.hflip, "must be in [0, 1]")
        _check(
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "data.crop_scale",
            self.crop_scale,
            "must be [min, max] with 0 < min <= max <= 1",
        )
        _check(
            self.backend in ("auto", "torchcodec", "decord", "pyav"),
            "data.backend",
            self.backend,
            "must be auto, torchcodec, decord or pyav",
        )
        _check(
            self.decode_device in ("cpu", "cuda"),
            "data.decode_device",
            self.decode_device,
            "must be cpu or cuda",
        )
        if self.decode_device == "cuda":
            _check(
                self.num_workers == 0,
                "data.num_workers",
                self.num_workers,
                "must be 0 with decode_device: cuda (CUDA cannot be used in DataLoader workers)",
            )
            _check(
                self.backend in ("auto", "torchcodec"),
                "data.backend",
                self.backend,
                "must be auto or torchcodec with decode_device: cuda (torchcodec decodes on the GPU)",
            )
        _check(self.max_failures >= 0, "data.max_failures", self.max_failures, "must be >= 0")


@dataclass
class TaskConfig:
    """Which objective the loop trains (``turbo_ds.tasks``). Any other key of the ``task:`` section is
    an option of that task (e.g. ``label_smoothing`` for classification), collected in ``options`` and
    validated by the task's own Options dataclass when the task is built."""

    name: str = "classification"
    """A registered task (classification, video_text) or an import path ``package.module:Class``."""
    mae_weight: float = 1.0
    """Weight of the Partial-MAE loss (used when ``pmae.enabled``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The task's own keys (written flat in YAML: ``task: {name: ..., label_smoothing: 0.1}``)."""

    extra_keys_field: typing.ClassVar[str] = "options"

    def __post_init__(self) -> None:
        _check(bool(self.name), "task.name", self.name, "must name a task")
        _check(self.mae_weight >= 0, "task.mae_weight", self.mae_weight, "must be >= 0")


@dataclass
class OptimConfig:
    """Batch sizes, AdamW and the schedule. Fills the ds_config's "auto" fields."""

    micro_batch_size: int = 8
    """Clips per rank per forward/backward (ds: train_micro_batch_size_per_gpu)."""
    grad_accum_steps: int = 1
    """Micro batches per optimizer step (ds: gradient_accumulation_steps)."""
    global_batch_size: int | None = None
    """Optional check: must equal micro x accumulation x world (ds: train_batch_size)."""
    lr: float = 1e-3
    """Peak learning rate (ds: optimizer.params.lr)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine."""
    weight_decay: float = 0.05
    """AdamW decay, not applied to norms, biases, position embeddings and tokens."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    layer_decay: float = 1.0
    """Layer-wise lr decay for fine-tuning pretrained ViTs (1.0 = off; 0.65-0.75 is typical)."""
    grad_clip: float = 1.0
    """Gradient norm clipping (ds: gradient_clipping, 0 = off)."""

    def __post_init__(self) -> None:
        _check(self.micro_batch_size > 0, "optim.micro_batch_size", self.micro_batch_size, "must be > 0")
        _check(self.grad_accum_steps > 0, "optim.grad_accum_steps", self.grad_accum_steps, "must be > 0")
        _check(
            self.global_batch_size is None or self.global_batch_size > 0,
            "optim.global_batch_size",
            self.global_batch_size,
            "must be > 0",
        )
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", self.min_lr, "must be in [0, optim.lr]")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            self.betas,
            "must be two numbers in [0, 1)",
        )
        _check(self.eps > 0, "optim.eps", self.eps, "must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(0 < self.layer_decay <= 1, "optim.layer_decay", self.layer_decay, "must be in (0, 1]")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")


@dataclass
class LoopConfig:
    """Length of the run, evaluation and logging cadence."""

    max_steps: int = 100
    """Optimizer steps to train (the schedule's length)."""
    eval_every: int = 0
    """Evaluate on ``data.val_split`` every N steps (0 = only at the end)."""
    eval_max_batches: int | None = None
    """Cap on evaluation batches per rank (None = the whole split)."""
    log_every: int = 10
    """Log metrics to MLflow every N steps."""
    max_nonfinite_in_row: int = 5
    """Consecutive non-finite losses (each skipped and counted) before the run stops with an error."""
    progress_bar: bool = True
    """tqdm progress bar on rank 0."""
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that make every rank save a checkpoint at the next step boundary and exit with status 75
    (preemption; see docs/training.md). [] leaves the signals' default action (the process dies)."""
    stall_timeout_s: float = 1800.0
    """A rank that makes no progress (no batch, no step) for this long exits with status 124 and a line
    naming the rank and what it waited for (0 = wait forever)."""

    def __post_init__(self) -> None:
        _check(self.max_steps > 0, "train.max_steps", self.max_steps, "must be > 0")
        _check(self.eval_every >= 0, "train.eval_every", self.eval_every, "must be >= 0")
        _check(
            self.eval_max_batches is None or self.eval_max_batches > 0,
            "train.eval_max_batches",
            self.eval_max_batches,
            "must be > 0 or null",
        )
        _check(self.log_every > 0, "train.log_every", self.log_every, "must be > 0")
        _check(
            self.max_nonfinite_in_row > 0,
            "train.max_nonfinite_in_row",
            self.max_nonfinite_in_row,
            "must be > 0",
        )
        _check(
            self.stall_timeout_s >= 0, "train.stall_timeout_s", self.stall_timeout_s, "must be >= 0 (0 = off)"
        )
        for name in self.stop_signals:
            try:
                signal_number(name)
            except ValueError as e:
                _check(False, "train.stop_signals", self.stop_signals, str(e))


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints (``<output_dir>/checkpoints/global_stepN`` + ``latest``)."""

    every_steps: int = 0
    """Save every N optimizer steps (0 = only at the end)."""
    save_final: bool = True
    """Save when training ends."""
    load_universal: bool = False
    """Resume from a universal checkpoint (other world size; see docs/training.md)."""

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "checkpoint.every_steps", self.every_steps, "must be >= 0")


@dataclass
class TrackingConfig:
    """MLflow tracking (rank 0 only)."""

    enabled: bool = True
    """Log to MLflow."""
    experiment: str = "turbo_ds"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name; None = the output folder's name."""
    tracking_uri: str | None = None
    """Store URI, which wins over $MLFLOW_TRACKING_URI; None = $MLFLOW_TRACKING_URI, else
    sqlite:///<output_dir>/mlflow.db."""
    memory_plan: bool = True
    """Measure the first training step's peak memory and log it beside the planner's prediction
    (``memory/predicted_peak_mb``, ``memory/measured_peak_mb``; see ``python -m turbo_ds.plan``)."""
    tags: dict[str, str] = field(default_factory=dict)
    """MLflow tags set on the run at its start, e.g. ``{owner: me}`` (``scripts/sweep.py`` adds its
    ``turbo_ds.sweep*`` tags here). Names as MLflow allows: letters, digits, ``_ - . / : `` and spaces."""
    system_metrics: bool = False
    """Sample CPU, memory, disk, network (and GPU, with ``nvidia-ml-py`` installed) utilisation on rank 0's
    machine with MLflow's own monitor, logged as ``system/*`` metrics."""
    system_metrics_interval_s: float = 10.0
    """Seconds between system metric samples (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` wins)."""

    def __post_init__(self) -> None:
        for name, value in self.tags.items():
            _check_tag_name(name, value)
        _check(
            self.system_metrics_interval_s > 0,
            "tracking.system_metrics_interval_s",
            self.system_metrics_interval_s,
            "must be > 0",
        )


# MLflow's rule for tag (and param, metric) names, checked here so a bad name fails before the run.
_TAG_NAME = re.compile(r"^[/\w.\- :]+$")
MAX_TAG_NAME_LEN = 250


def _check_tag_name(name: str, value: str) -> None:
    key = f"tracking.tags.{name}"
    _check(
        bool(_TAG_NAME.match(name)),
        key,
        value,
        "tag names may only hold letters, digits, _ - . / : and spaces",
    )
    _check(len(name) <= MAX_TAG_NAME_LEN, key, value, f"tag names are at most {MAX_TAG_NAME_LEN} characters")
    # MLflow may store a name as a path: it must not normalise to another one ('a//b', '../x', 'a/').
    _check(
        posixpath.normpath(name) == name and not name.startswith(("/", "..")),
        key,
        value,
        "tag names must be plain relative paths",
    )


@dataclass
class TrainConfig:
    """The whole run. Sections map one-to-one to the YAML's top-level keys."""

    output_dir: str = "runs/default"
    """Run folder: resolved config, checkpoints, MLflow store (default), final metrics."""
    seed: int = 0
    """Seed for model init, token dropout and data order."""
    model: ModelConfig = field(default_factory=ModelConfig)
    token_dropout: TokenDropoutConfig = field(default_factory=TokenDropoutConfig)
    pmae: PMAEConfig = field(default_factory=PMAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _check(bool(self.output_dir), "output_dir", self.output_dir, "must be a path")
        m, d = self.model, self.data
        _check(
            m.num_frames is None or m.num_frames == d.num_frames,
            "model.num_frames",
            m.num_frames,
            f"must equal data.num_frames ({d.num_frames}) or be null",
        )
        _check(
            m.img_size is None or m.img_size == d.img_size,
            "model.img_size",
            m.img_size,
            f"must equal data.img_size ({d.img_size}) or be null",
        )
        _check(
            self.token_dropout.final_dense_steps <= self.train.max_steps,
            "token_dropout.final_dense_steps",
            self.token_dropout.final_dense_steps,
            f"must be <= train.max_steps ({self.train.max_steps})",
        )
        _check(
            self.optim.warmup_steps <= self.train.max_steps,
            "optim.warmup_steps",
            self.optim.warmup_steps,
            f"must be <= train.max_steps ({self.train.max_steps})",
        )


# --------------------------------------------------------------------------- building from dicts


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float allowed), raising ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            _check(type(None) in args, key, value, f"must be {_type_name(tp)}, not null")
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, value, "must be a mapping (a config section)")
        return build_section(tp, value, key + ".")
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), key, value, f"must be a list ({_type_name(tp)})")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _check(isinstance(value, dict), key, value, "must be a mapping")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        for k in value:
            _check(key_tp is not str or isinstance(k, str), f"{key}.{k}", k, "names must be strings")
        return {k: _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, value, "must be true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "must be a number"
        )
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, value, "must be a string")
        return value
    return value


# Keys that moved: an old config gets told where they went.
MOVED_KEYS = {
    "data.num_classes": "task.num_classes",
    "model.num_classes": "task.num_classes",
}


def build_section(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from ``data``: unknown keys, wrong types and bad values raise a
    ConfigError naming the dotted key (``prefix`` + key)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    extra_field = getattr(cls, "extra_keys_field", None)
    if unknown and extra_field:  # e.g. task options: validated later by the task itself
        data = {k: v for k, v in data.items() if k not in unknown} | {
            extra_field: {**data.get(extra_field, {}), **{k: data[k] for k in unknown}}
        }
        unknown = []
    if unknown:
        moved = [
            f"{prefix + k!r} is now {MOVED_KEYS[prefix + k]!r}" for k in unknown if prefix + k in MOVED_KEYS
        ]
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(prefix + k) for k in unknown)}; "
            f"valid keys{' in ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(names)}"
            + (f" ({'; '.join(moved)})" if moved else "")
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    value = _yaml().safe_load(raw) if raw.strip() else ""
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b=c`` strings (values parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides or []:
        parts, value = _parse_override(item)
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict."""
    return build_section(TrainConfig, dict(data or {}))


def upgrade_stored_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict stored by an older turbo_ds (in a checkpoint or export), in today's layout."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    for section in ("data", "model"):
        n = data.get(section, {}).pop("num_classes", None) if isinstance(data.get(section), dict) else None
        if n:
            data.setdefault("task", {}).setdefault("num_classes", n)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            data = _yaml().safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {path} must contain a mapping of sections, got {type(data).__name__}"
            )
    apply_overrides(data, overrides)
    return config_from_dict(data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain nested dicts (what is written to the run folder and MLflow); task
    options are written flat in the ``task`` section, as in a config file."""
    d = dataclasses.asdict(cfg)
    task = d.get("task")
    if isinstance(task, dict) and "options" in task:
        options = task.pop("options")
        task.update(options)
    return d


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML; loading it back gives an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        _yaml().safe_dump(config_to_dict(cfg), f, sort_keys=False)
    return path


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists and None kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
