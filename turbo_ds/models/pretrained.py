"""Load image and video ViT checkpoints into a VideoViT.

Formats: `videomae` (keys under `encoder.`, separate q/v biases), `timm` image ViTs, `open_clip` ViT
image towers, and `turbo_ds` (this package's own keys, e.g. a `scripts/export.py` safetensors export).
Files are read without running code: safetensors, or `torch.load(weights_only=True)`; a pickle that needs
more loads only with `weights_only=False` (config `model.pretrained_trust_pickle`). Each is first renamed to VideoViT's keys, then
adapted: 2D patch kernels are inflated to 3D tubelets (`center` or `average`), position tables are split
into spatial / temporal parts and interpolated to the model's grid. Missing and unexpected keys are
reported; a shape that still differs is an error naming the key and both shapes.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from turbo_ds.models.pos_embed import resize_spatial, resize_temporal, square_side
from turbo_ds.models.vit import VideoViT

FORMATS = ("auto", "videomae", "timm", "open_clip", "turbo_ds")
INFLATIONS = ("center", "average")


@dataclass
class LoadReport:
    """missing: model keys the checkpoint did not provide (left as initialised);
    unexpected: checkpoint keys (after renaming) the model has no place for; interpolated: keys resized
    or inflated to fit; notes: other adaptations worth knowing (approximations, ignored towers)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fmt: str = ""

    def __str__(self) -> str:
        parts = [f"format={self.fmt}"]
        for name in ("missing", "unexpected", "interpolated", "notes"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} ({len(items)}): " + ", ".join(items))
        return "; ".join(parts)


TRUST_PICKLE_HINT = (
    "if you trust whoever wrote it, opt in with model.pretrained_trust_pickle=true (config), "
    "--trust-pickle (scripts/eval.py, scripts/export.py) or weights_only=False (Python)"
)


def torch_load(path: str | Path, weights_only: bool = True) -> Any:
    """``torch.load`` onto the CPU. With ``weights_only`` (the default) only tensors and plain containers
    are unpickled, so no code in the file can run; a file that pickles other objects raises a ValueError
    naming the opt-in. ``weights_only=False`` runs whatever the pickle holds: trusted files only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        why = next((ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln), type(err).__name__)
        raise ValueError(
            f"{path}: refused to load: it pickles Python objects, not only tensors ({why}), and unpickling "
            f"them can run any code; {TRUST_PICKLE_HINT}. Prefer safetensors (scripts/export.py writes it)"
        ) from err


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a ``.safetensors`` file: plain data, nothing to execute."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def _read_file(path: Path, weights_only: bool) -> Any:
    if path.suffix == ".json":  # the config of a turbo_ds export: its weights file lies beside it
        meta = json.loads(path.read_text())
        if meta.get("format") != "turbo_ds" or "weights" not in meta:
            raise ValueError(f"{path}: not a turbo_ds export config (no format: turbo_ds / weights)")
        path = path.parent / meta["weights"]
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path)
        prefix = meta.get("encoder_prefix") if meta.get("format") == "turbo_ds" else None
        if prefix:  # a turbo_ds export holds the task's state dict: the encoder is under its prefix
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        return sd
    return torch_load(path, weights_only)


def read_state_dict(
    source: str | Path | Mapping[str, torch.Tensor], weights_only: bool = True
) -> dict[str, torch.Tensor]:
    """A flat state dict from a path or mapping, unwrapping `model` / `module` / `state_dict` containers.

    `.safetensors` files (and a turbo_ds export, given as its `.safetensors` or `.json`) hold only
    tensors. Other files are read with `torch.load(weights_only=True)`, which unpickles tensors and plain
    containers only; training checkpoints that pickle other objects (VideoMAE stores its argparse
    namespace) need `weights_only=False`, for files you trust: otherwise a ValueError names the opt-in.
    """
    sd = _read_file(Path(source), weights_only) if isinstance(source, (str, Path)) else source
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return dict(sd)


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    keys = set(sd)
    if any(k.endswith("conv1.weight") or ".resblocks." in k for k in keys):
        return "open_clip"
    if "pos_embed_spatial" in keys or any(k.startswith("token_dropout") for k in keys):
        return "turbo_ds"
    if any(k.startswith("encoder.") for k in keys) or any(k.endswith("attn.q_bias") for k in keys):
        return "videomae"
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 5:
        return "videomae"
    if w is not None:
        return "timm"
    raise ValueError("cannot detect the checkpoint format (no patch embedding found); pass fmt=")


def _split_joint_pos(
    pos: torch.Tensor, has_cls_slot: bool | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(1, [1+]HW, D) image table -> (cls part or None, spatial part); a perfect square has no cls."""
    pos = pos.reshape(1, -1, pos.shape[-1])
    n = pos.shape[1]
    if has_cls_slot is None:
        has_cls_slot = square_side_or_none(n) is None
    return (pos[:, :1], pos[:, 1:]) if has_cls_slot else (None, pos)


def square_side_or_none(n: int) -> int | None:
    try:
        return square_side(n, "")
    except ValueError:
        return None


def _convert_timm(sd: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k == "pos_embed":
            cls_pos, spatial = _split_joint_pos(v)
            out["pos_embed_spatial"] = spatial
            if cls_pos is not None:
                out["pos_embed_cls"] = cls_pos
        else:
            out[k] = v
    return out


_CLIP_RENAMES = [
    (r"^conv1\.weight$", "patch_embed.proj.weight"),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
]


def _convert_open_clip(sd: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    if any(k.startswith("visual.") for k in sd):
        others = [k for k in sd if not k.startswith("visual.")]
        if others:
            report.notes.append(f"ignored {len(others)} non-visual (text tower / logit scale) keys")
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    out = {}
    for k, v in sd.items():
        if k == "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == "positional_embedding":
            cls_pos, spatial = _split_joint_pos(v, has_cls_slot=True)
            out["pos_embed_cls"], out["pos_embed_spatial"] = cls_pos, spatial
        elif k == "proj":
            out["proj.weight"] = v.t()  # CLIP computes pooled @ proj
        else:
            for pattern, repl in _CLIP_RENAMES:
                if re.search(pattern, k):
                    k = re.sub(pattern, repl, k)
                    break
            out[k] = v
    return out


def _convert_videomae(
    sd: dict[str, torch.Tensor], report: LoadReport, model: VideoViT
) -> dict[str, torch.Tensor]:
    if any(k.startswith("encoder.") for k in sd):
        # Pre-training checkpoints: the encoder is ours; decoder keys stay visible as unexpected.
        sd = {k.removeprefix("encoder."): v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+\.attn)\.(q|v)_bias$", k)
        if m:
            if m.group(2) == "q":  # VideoMAE has no k bias: qkv bias = (q, 0, v)
                v_bias = sd[f"{m.group(1)}.v_bias"]
                out[f"{m.group(1)}.qkv.bias"] = torch.cat([v, torch.zeros_like(v), v_bias])
        elif k == "pos_embed":
            out.update(_factor_joint_pos(v, model, report))
        else:
            out[k] = v
    return out


def _factor_joint_pos(pos: torch.Tensor, model: VideoViT, report: LoadReport) -> dict[str, torch.Tensor]:
    """A joint (1, T*H*W, D) table -> the closest additive space + time tables (exact if separable)."""
    t = model.cfg.grid[0]
    pos = pos.reshape(1, -1, pos.shape[-1])
    if pos.shape[1] % t or square_side_or_none(pos.shape[1] // t) is None:
        raise ValueError(f"pos_embed: cannot split {pos.shape[1]} positions into {t} frames of a square grid")
    grid = pos.reshape(t, pos.shape[1] // t, pos.shape[-1])
    spatial = grid.mean(dim=0, keepdim=True)
    temporal = grid.mean(dim=1)[None] - grid.mean(dim=(0, 1))
    report.notes.append("pos_embed: joint space-time table factored into spatial + temporal (approximate)")
    return {"pos_embed_spatial": spatial, "pos_embed_temporal": temporal}


def inflate_patch_weight(weight: torch.Tensor, tubelet_size: int, inflation: str) -> torch.Tensor:
    """(D, C, p, p) image kernel -> (D, C, t, p, p): `center` puts it on the middle frame, `average`
    spreads it evenly, so a clip of identical frames gives the image's embedding."""
    if inflation not in INFLATIONS:
        raise ValueError(f"inflation must be one of {INFLATIONS}, got {inflation!r}")
    if inflation == "average":
        return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    out = weight.new_zeros(weight.shape[0], weight.shape[1], tubelet_size, *weight.shape[2:])
    out[:, :, tubelet_size // 2] = weight
    return out


def _adapt(
    sd: dict[str, torch.Tensor], model: VideoViT, inflation: str, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Inflate the patch kernel, resize position tables, zero a temporal table an image model lacks."""
    cfg = model.cfg
    target = model.state_dict()
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        sd["patch_embed.proj.weight"] = inflate_patch_weight(w, cfg.tubelet_size, inflation)
        if cfg.tubelet_size > 1:
            report.interpolated.append(f"patch_embed.proj.weight ({inflation} inflation)")
        if "pos_embed_spatial" in sd and "pos_embed_temporal" not in sd and "pos_embed_temporal" in target:
            sd["pos_embed_temporal"] = torch.zeros_like(target["pos_embed_temporal"])
            report.notes.append("pos_embed_temporal: zeros (image checkpoint)")
    _, gh, gw = cfg.grid
    spatial = sd.get("pos_embed_spatial")
    if spatial is not None and "pos_embed_spatial" in target and spatial.shape[1] != gh * gw:
        side = square_side(spatial.shape[1], "pos_embed_spatial")
        sd["pos_embed_spatial"] = resize_spatial(spatial, (side, side), (gh, gw))
        report.interpolated.append(f"pos_embed_spatial ({side}x{side} -> {gh}x{gw})")
    temporal = sd.get("pos_embed_temporal")
    if temporal is not None and "pos_embed_temporal" in target and temporal.shape[1] != cfg.grid[0]:
        sd["pos_embed_temporal"] = resize_temporal(temporal, cfg.grid[0])
        report.interpolated.append(f"pos_embed_temporal ({temporal.shape[1]} -> {cfg.grid[0]})")
    return sd


def load_pretrained(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    fmt: str = "auto",
    inflation: str = "center",
    exclude: Iterable[str] = (),
    weights_only: bool = True,
) -> LoadReport:
    """Load `source` into `model` (a VideoViT, or a module with an `.encoder` VideoViT).

    `exclude`: key prefixes (after renaming) to leave out, e.g. `("head.",)` to fine-tune on new
    classes. `weights_only=False` allows pickled training checkpoints (trusted files only: unpickling
    can run code). Raises
    ValueError listing every key whose shape still differs after adaptation.
    """
    vit = model.encoder if not isinstance(model, VideoViT) and hasattr(model, "encoder") else model
    if not isinstance(vit, VideoViT):
        raise TypeError(
            f"load_pretrained needs a VideoViT (or a model with .encoder), got {type(model).__name__}"
        )
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    sd = read_state_dict(source, weights_only)
    fmt = detect_format(sd) if fmt == "auto" else fmt
    report = LoadReport(fmt=fmt)
    if fmt == "timm":
        sd = _convert_timm(sd, report)
    elif fmt == "open_clip":
        sd = _convert_open_clip(sd, report)
    elif fmt == "videomae":
        sd = _convert_videomae(sd, report, vit)
    sd = _adapt(sd, vit, inflation, report)
    excluded = tuple(exclude)
    sd = {k: v for k, v in sd.items() if not (excluded and k.startswith(excluded))}

    target = vit.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in sd.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        raise ValueError(f"shape mismatch loading a {fmt} checkpoint: " + "; ".join(mismatched))
    report.unexpected = sorted(k for k in sd if k not in target)
    report.missing = sorted(k for k in target if k not in sd and not (excluded and k.startswith(excluded)))
    vit.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    return report
