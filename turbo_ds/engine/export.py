"""Checkpoint conversion: ZeRO shards -> one fp32 file ``VideoViT`` loads; DeepSpeed universal checkpoints.

Exported file (``torch.save``): ``{"state_dict": encoder weights (fp32), "vit_config": ViTConfig fields,
"train_config": the run's resolved config, "step": int}``; :func:`load_exported` rebuilds the
``VideoViT`` from it. The task-level state dict (encoder + Partial-MAE decoder) is kept under
``"task_state_dict"`` so that training can also start from an export.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ENCODER_PREFIX = "model.encoder."


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


def _model_states(tag_dir: Path) -> dict[str, Any]:
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt")) or sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        raise FileNotFoundError(f"no *model_states.pt in {tag_dir}")
    return torch.load(files[0], map_location="cpu", weights_only=False)


def consolidate(
    checkpoint_dir: str | Path, tag: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """fp32 task-level state dict gathered from every ZeRO shard, and the checkpoint's client state."""
    root, tag = resolve_tag(checkpoint_dir, tag)
    states = _model_states(root / tag)
    client = states.get("turbo_ds", {})
    if (
        list((root / tag).glob("*optim_states.pt"))
        and states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) > 0
    ):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    else:  # ZeRO stage 0: the module's weights are stored whole
        sd = states["module"]
    return {k: v.float().clone() for k, v in sd.items()}, client


def export_encoder(checkpoint_dir: str | Path, out_path: str | Path, tag: str | None = None) -> Path:
    """Write the consolidated encoder (what ``VideoViT`` loads for inference) to ``out_path``."""
    from turbo_ds.config import config_from_dict, upgrade_stored_config
    from turbo_ds.tasks import build_model

    sd, client = consolidate(checkpoint_dir, tag)
    if "config" not in client:
        raise ValueError(
            f"checkpoint {checkpoint_dir} has no turbo_ds client state (not written by turbo_ds?)"
        )
    cfg = config_from_dict(upgrade_stored_config(client["config"]))
    enc_sd = {k[len(ENCODER_PREFIX) :]: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}
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
    out = {
        "format": "turbo_ds",
        "state_dict": enc_sd,
        "vit_config": vit_config,
        "train_config": client["config"],
        "step": client.get("step"),
        "task_state_dict": sd,
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, out_path)
    return out_path


def load_exported(path: str | Path):
    """The ``VideoViT`` (eval mode) stored by :func:`export_encoder`."""
    from turbo_ds.models import VideoViT, ViTConfig

    data = torch.load(path, map_location="cpu", weights_only=False)
    model = VideoViT(ViTConfig(**data["vit_config"]))
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval()


def to_universal(
    checkpoint_dir: str | Path, tag: str | None = None, output: str | Path | None = None
) -> Path:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (``<tag>_universal`` next to it, and
    ``latest_universal``), which any world size can resume from with ``checkpoint.load_universal=true``."""
    root, tag = resolve_tag(checkpoint_dir, tag)
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
