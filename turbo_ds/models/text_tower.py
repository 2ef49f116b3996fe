"""The text tower of the video-text model: open_clip's CLIP text transformer and its BPE tokenizer.

`build_text_tower` builds ONLY the text half of an open_clip model config: open_clip's own
`_build_text_tower` (the function `CLIP.__init__` calls) from the config's `text_cfg`, `embed_dim` and
`quick_gelu`. The vision tower of the config is never created, which saves its memory and init time for
ViT-B / ViT-L configs; the video tower is a `VideoViT` that takes the checkpoint's `visual.*` weights
through `turbo_ds.models.pretrained.load_pretrained(..., fmt="open_clip")`, so one open_clip checkpoint
file feeds both towers.

Checkpoint keys: open_clip `CLIP` stores the text tower flat (`token_embedding.weight`,
`positional_embedding`, `transformer.resblocks.N.*`, `ln_final.*`, `text_projection`), which are exactly
the names inside open_clip's `TextTransformer`; `CustomTextCLIP` stores the same names under `text.`.
`visual.*`, `logit_scale` and `logit_bias` are skipped: the logit scale / bias belong to the contrastive
head of the video-text model, which should keep them trainable in every text `mode`.

open_clip is imported lazily (inside the functions), so `import turbo_ds.models` still needs torch only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from turbo_ds.models.pretrained import read_state_dict

MODES = ("frozen", "last_n", "full")
CONFIG_DIR = Path(__file__).parent / "model_configs"  # turbo-tiny.json and any other custom configs
_SKIPPED_KEYS = ("logit_scale", "logit_bias")  # CLIP-level, not part of the text tower
_configs_registered = False


def register_model_configs() -> None:
    """Make the JSON configs shipped in `turbo_ds/models/model_configs/` (e.g. `turbo-tiny`) known to
    open_clip, so that `open_clip.create_model("turbo-tiny")` works too. Idempotent."""
    global _configs_registered
    if not _configs_registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _configs_registered = True


def _names(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class TextTower(nn.Module):
    """An open_clip text transformer: tokens (N, L) -> text embeddings (N, embed_dim), not normalised.

    The open_clip `TextTransformer` is `self.text` (its parameter names are the CLIP checkpoint's);
    `forward` is its only entry point and returns a plain tensor, as ZeRO-3's parameter hooks need.
    `mode`: "frozen" (nothing trainable and `train()` keeps the tower in eval mode), "last_n" (the last
    `last_n` transformer blocks, `ln_final` and `text_projection` trainable; embeddings frozen) or
    "full". Unlike open_clip's `lock_text_tower(unlocked_layers)`, `last_n` counts blocks only.
    """

    def __init__(self, text: nn.Module, mode: str = "frozen", last_n: int = 1) -> None:
        super().__init__()
        self.text = text
        self.context_length: int = text.context_length
        self.vocab_size: int = text.vocab_size
        self.embed_dim: int = text.output_dim if text.text_projection is not None else text.width
        self.mode = "full"
        self.last_n = 0
        self.set_trainable(mode, last_n)

    @property
    def num_layers(self) -> int:
        return len(self.text.transformer.resblocks)

    def set_trainable(self, mode: str, last_n: int = 1) -> None:
        """Set `requires_grad` for `mode` (see the class docstring); a bad mode / last_n is a ValueError."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "last_n" and not 1 <= last_n <= self.num_layers:
            raise ValueError(f"last_n must be in [1, {self.num_layers}] (the text blocks), got {last_n}")
        for p in self.parameters():
            p.requires_grad_(mode == "full")
        if mode == "last_n":
            unfrozen: list[nn.Module | nn.Parameter | None] = [
                *self.text.transformer.resblocks[-last_n:],
                self.text.ln_final,
                self.text.text_projection,
            ]
            for part in unfrozen:
                if part is not None:  # text_projection is None for proj_type "none"
                    part.requires_grad_(True)
        self.mode = mode
        self.last_n = last_n if mode == "last_n" else 0
        self.train(self.training)

    def train(self, mode: bool = True) -> TextTower:
        """A frozen tower stays in eval mode (no dropout), whatever the parent model asks."""
        return super().train(mode and self.mode != "frozen")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(
                f"tokens must be (N, {self.context_length}) (the tower's context_length), "
                f"got {tuple(tokens.shape)}"
            )
        return self.text(tokens)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, last_n={self.last_n}, context_length={self.context_length}, "
            f"embed_dim={self.embed_dim}"
        )


def _text_config(model_name: str) -> tuple[dict[str, Any], Any]:
    """(open_clip model config, CLIPTextCfg) for a built-in or registered config name."""
    import open_clip

    register_model_configs()
    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"{model_name!r}: pass an open_clip config name; schemas are not supported here")
    name = model_name.replace("/", "-")  # "ViT-B/16" -> "ViT-B-16", as open_clip.create_model does
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model config {model_name!r} (see open_clip.list_models())")
    text_cfg = open_clip.CLIPTextCfg(**cfg["text_cfg"])
    if text_cfg.hf_model_name or "multimodal_cfg" in cfg or text_cfg.embed_cls:
        raise ValueError(
            f"{model_name!r}: only open_clip's own CLIP text transformer is supported "
            "(no Hugging Face text models, no CoCa)"
        )
    return cfg, text_cfg


def _load_text_state(
    text: nn.Module, source: str | Path | Mapping[str, torch.Tensor], weights_only: bool
) -> None:
    """Load the text keys of an open_clip CLIP / CustomTextCLIP state dict into `text`, strictly."""
    sd = read_state_dict(source, weights_only)  # unwraps {"state_dict": ...} and "module."
    sd = {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in _SKIPPED_KEYS}
    if any(k.startswith("text.") for k in sd):  # CustomTextCLIP layout
        sd = {k.removeprefix("text."): v for k, v in sd.items()}
    target = text.state_dict()
    where = source if isinstance(source, (str, Path)) else "state dict"
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if missing or unexpected:
        raise ValueError(
            f"{where}: does not hold this open_clip text tower: missing text keys [{_names(missing)}]; "
            f"unexpected keys [{_names(unexpected)}]"
        )
    pos = sd["positional_embedding"]
    want = target["positional_embedding"].shape
    if pos.ndim == 2 and pos.shape[0] > want[0] and pos.shape[1] == want[1]:
        sd["positional_embedding"] = pos[: want[0]]  # a shorter context_length: keep the first positions
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs tower {tuple(target[k].shape)}"
        for k, v in sd.items()
        if v.shape != target[k].shape
    ]
    if mismatched:
        raise ValueError(f"{where}: shape mismatch loading the text tower: " + "; ".join(mismatched))
    text.load_state_dict(sd, strict=True)


def build_text_tower(
    model_name: str,
    checkpoint: str | Path | Mapping[str, torch.Tensor] | None = None,
    context_length: int | None = None,
    mode: str = "frozen",
    last_n: int = 1,
    weights_only: bool = True,
) -> TextTower:
    """The text tower of open_clip config `model_name` (e.g. "ViT-B-16", or our "turbo-tiny").

    `checkpoint`: an open_clip checkpoint file (or state dict) with both towers; its text keys must match
    exactly (ValueError naming the keys), `visual.*` / logit keys are ignored. Without it the tower is
    randomly initialised as open_clip does. `context_length` may be shorter than the config's (positions
    and causal mask truncated), not longer. `mode` / `last_n`: see `TextTower`. fp32; cast it yourself.
    """
    from open_clip.model import _build_text_tower

    cfg, text_cfg = _text_config(model_name)
    if context_length is not None:
        if not 2 <= context_length <= text_cfg.context_length:
            raise ValueError(
                f"context_length must be in [2, {text_cfg.context_length}] for {model_name!r} "
                f"(the config's context), got {context_length}"
            )
        text_cfg = dataclasses.replace(text_cfg, context_length=context_length)
    text_cfg = dataclasses.replace(text_cfg, output_tokens=False)
    text = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
    if checkpoint is not None:
        _load_text_state(text, checkpoint, weights_only)
    return TextTower(text, mode=mode, last_n=last_n)


class TextTokenizer:
    """open_clip's default CLIP BPE tokenizer as a picklable callable for DataLoader workers.

    `tokenizer(texts) -> LongTensor (n, context_length)`: SOT, BPE tokens, EOT, zero padding; a long
    text is truncated with EOT kept last (`open_clip.tokenize` semantics). The BPE vocabulary ships in
    the open_clip wheel (no network). The `SimpleTokenizer` is created on first use in each process and
    never pickled. Configs naming an `hf_tokenizer_name` (SigLIP, ...) need another tokenizer: compare
    `vocab_size` with the tower's.
    """

    def __init__(self, context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        self.context_length = context_length
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, context_length=self.context_length)

    def __getstate__(self) -> dict[str, Any]:
        return {"context_length": self.context_length}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.context_length = state["context_length"]
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"TextTokenizer(context_length={self.context_length})"
