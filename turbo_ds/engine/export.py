"""Checkpoint conversion: ZeRO shards -> one fp32 file ``VideoViT`` loads; DeepSpeed universal checkpoints.

An export is two files that hold no code: ``<name>.safetensors``, the task-level fp32 state dict
(the video encoder under the task's ``video_encoder_prefix``, ``model.encoder.`` for most tasks, plus
e.g. the Partial-MAE decoder, so that training can also start from an export), and ``<name>.json``: ``{"format": "turbo_ds", "weights": "<name>.safetensors",
"encoder_prefix", "vit_config": ViTConfig fields, "train_config": the run's resolved config, "task",
"step"}``. :func:`load_exported` rebuilds the ``VideoViT``; :func:`read_export` gives everything.
Exports from before (one ``torch.save`` pickle of the same dict) still load, with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ENCODER_PREFIX = "model.encoder."  # exports that do not say (before encoder_prefix was written)
EXPORT_VERSION = 1
# What DeepSpeed itself pickles in its checkpoint files beyond tensors and plain containers; anything
# else in a checkpoint (whose conversion DeepSpeed unpickles in full) needs trust_pickle.
DEEPSPEED_GLOBALS = frozenset(
    {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
    }
)


def resolve_tag(checkpoint_dir: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """(checkpoint root, tag): ``checkpoint_dir`` is a root with ``latest`` or a tag folder itself."""
    d = Path(checkpoint_dir)
    if tag is not None:
        return d, tag
    if (d / "latest").exists():
        return d, (d / "latest").read_text().strip()
    if list(d.glob("*model_states.pt")):
        return d.parent, d.name
    raise FileNotFoundError(
        f"{d} is neither a checkpoint folder with a 'latest' file nor a checkpoint tag folder"
    )


def check_checkpoint_pickles(tag_dir: Path, trust_pickle: bool = False) -> None:
    """Refuse (ValueError naming the opt-in) a DeepSpeed checkpoint whose files pickle objects other than
    tensors, plain containers and :data:`DEEPSPEED_GLOBALS`: DeepSpeed's converters unpickle them in full.
    The files are scanned, not loaded."""
    if trust_pickle:
        return
    from turbo_ds.models.pretrained import TRUST_PICKLE_HINT

    for f in sorted(tag_dir.glob("*_states.pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(f)) - DEEPSPEED_GLOBALS
        except Exception as err:  # not a zip-format torch file: cannot be scanned
            unsafe = {f"unreadable without unpickling ({type(err).__name__})"}
        if unsafe:
            raise ValueError(
                f"{f}: refused to load: it pickles {', '.join(sorted(unsafe))}, and unpickling can run "
                f"any code; {TRUST_PICKLE_HINT}"
            )


def _model_states(tag_dir: Path, trust_pickle: bool = False) -> dict[str, Any]:
    from turbo_ds.models.pretrained import torch_load

    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt")) or sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        raise FileNotFoundError(f"no *model_states.pt in {tag_dir}")
    return torch_load(files[0], weights_only=not trust_pickle)


def consolidate(
    checkpoint_dir: str | Path, tag: str | None = None, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """fp32 task-level state dict gathered from every ZeRO shard, and the checkpoint's client state.

    Files are read with ``weights_only=True`` (and ZeRO shards scanned first, see
    :func:`check_checkpoint_pickles`) unless ``trust_pickle``."""
    root, tag = resolve_tag(checkpoint_dir, tag)
    states = _model_states(root / tag, trust_pickle)
    client = states.get("turbo_ds", {})
    if (
        list((root / tag).glob("*optim_states.pt"))
        and states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) > 0
    ):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        check_checkpoint_pickles(root / tag, trust_pickle)
        sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    else:  # ZeRO stage 0: the module's weights are stored whole
        sd = states["module"]
    return {k: v.float().clone() for k, v in sd.items()}, client


def export_paths(out_path: str | Path) -> tuple[Path, Path]:
    """(weights, config) files of an export named ``out_path``: ``x.safetensors`` and ``x.json`` for
    ``x.safetensors``, ``x``, ``x.json`` or ``x.pt`` (an old-style name: the export is safetensors now)."""
    p = Path(out_path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json", ".pt", ".pth", ".bin") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def export_encoder(
    checkpoint_dir: str | Path, out_path: str | Path, tag: str | None = None, trust_pickle: bool = False
) -> Path:
    """Write the consolidated weights (fp32 safetensors) and the model / train config (JSON) of a
    checkpoint; returns the ``.safetensors`` path (see :func:`export_paths`)."""
    from safetensors.torch import save_file

    from turbo_ds.config import config_from_dict, upgrade_stored_config
    from turbo_ds.tasks import build_model, get_task_class

    sd, client = consolidate(checkpoint_dir, tag, trust_pickle)
    if "config" not in client:
        raise ValueError(
            f"checkpoint {checkpoint_dir} has no turbo_ds client state (not written by turbo_ds?)"
        )
    cfg = config_from_dict(upgrade_stored_config(client["config"]))
    prefix = get_task_class(cfg.task.name).video_encoder_prefix
    enc_sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    num_classes = enc_sd["head.weight"].shape[0] if "head.weight" in enc_sd else 0
    cfg.pmae.enabled = False
    encoder = build_model(
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None)),
        num_classes=num_classes,
        proj_dim=enc_sd["proj.weight"].shape[0] if "proj.weight" in enc_sd else None,
    ).encoder
    encoder.load_state_dict(enc_sd, strict=True)  # fail here, not at inference time
    vit_config = dataclasses.asdict(encoder.cfg)
    vit_config["drop_ratio"] = 0.0
    weights, config = export_paths(out_path)
    meta = {
        "format": "turbo_ds",
        "version": EXPORT_VERSION,
        "weights": weights.name,
        "encoder_prefix": prefix,
        "vit_config": vit_config,
        "train_config": client["config"],
        "task": cfg.task.name,
        "step": client.get("step"),
    }
    weights.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "turbo_ds", "encoder_prefix": prefix, "config": config.name}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(weights), metadata=header)
    config.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return weights


def read_export(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """An export as ``{"state_dict": encoder weights, "task_state_dict", "vit_config", "train_config",
    "step", ...}``. ``path``: its ``.safetensors`` or ``.json``, or an old-style pickled ``.pt``
    (read with ``weights_only=True`` unless ``trust_pickle``). No code in the files runs."""
    from turbo_ds.models.pretrained import read_safetensors, torch_load

    p = Path(path)
    if p.suffix == ".pt" and not p.exists() and p.with_suffix(".safetensors").exists():
        # scripts/export.py --out x.pt writes x.safetensors + x.json beside it (and says so)
        print(
            f"[turbo_ds] {p} does not exist; reading the export {p.with_suffix('.safetensors')}", flush=True
        )
        p = p.with_suffix(".safetensors")
    if p.suffix not in (".safetensors", ".json"):
        data = torch_load(p, weights_only=not trust_pickle)
        if not isinstance(data, dict) or "state_dict" not in data or "train_config" not in data:
            raise ValueError(f"{p}: not a turbo_ds export (no state_dict / train_config)")
        return data
    config = p if p.suffix == ".json" else export_paths(p)[1]
    if not config.exists():
        raise FileNotFoundError(f"{config}: the export's config (written beside its .safetensors) is missing")
    meta = json.loads(config.read_text())
    if meta.get("format") != "turbo_ds" or "weights" not in meta:
        raise ValueError(f"{config}: not a turbo_ds export config (format={meta.get('format')!r})")
    task_sd, _ = read_safetensors(p if p.suffix == ".safetensors" else config.parent / meta["weights"])
    prefix = meta.get("encoder_prefix", ENCODER_PREFIX)
    enc_sd = {k[len(prefix) :]: v for k, v in task_sd.items() if k.startswith(prefix)}
    return {**meta, "state_dict": enc_sd, "task_state_dict": task_sd}


def load_exported(path: str | Path, trust_pickle: bool = False):
    """The ``VideoViT`` (eval mode) stored by :func:`export_encoder` (see :func:`read_export`)."""
    from turbo_ds.models import VideoViT, ViTConfig

    data = read_export(path, trust_pickle)
    model = VideoViT(ViTConfig(**data["vit_config"]))
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval()


def to_universal(
    checkpoint_dir: str | Path,
    tag: str | None = None,
    output: str | Path | None = None,
    trust_pickle: bool = False,
) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (``<tag>_universal`` next to it, and
    ``latest_universal``), which any world size can resume from with ``checkpoint.load_universal=true``.
    DeepSpeed unpickles the shards in full: they are scanned first (:func:`check_checkpoint_pickles`)."""
    root, tag = resolve_tag(checkpoint_dir, tag)
    check_checkpoint_pickles(root / tag, trust_pickle)
    out = Path(output) if output else root / f"{tag}_universal"
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(root / tag),
        "--output_folder",
        str(out),
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
        "--inject_missing_state",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"ds_to_universal failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return out
