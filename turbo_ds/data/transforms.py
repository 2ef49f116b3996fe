"""Clip transforms on uint8 tensors (T, C, H, W). Random parameters are drawn once per clip, so every
frame gets the same crop/flip; normalisation to float (C, T, H, W) comes last."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, C) uint8 numpy (or a tensor, e.g. decoded on a GPU) -> (T, C, H, W) uint8 tensor."""
    if isinstance(frames, torch.Tensor):
        return frames.permute(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize every frame to (h, w), bilinear with antialias, staying uint8 (on a GPU computed in float:
    torch's antialiased uint8 resize is a CPU kernel)."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    if clip.is_cuda and clip.dtype == torch.uint8:
        out = F.interpolate(clip.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(clip, size=size, mode="bilinear", antialias=True, align_corners=False)


def short_side_resize(clip: torch.Tensor, short_side: int) -> torch.Tensor:
    h, w = clip.shape[-2:]
    s = short_side / min(h, w)
    return resize(clip, (max(1, round(h * s)), max(1, round(w * s))))


def crop(clip: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return clip[..., top : top + h, left : left + w]


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    h, w = clip.shape[-2:]
    if h < size or w < size:
        clip = short_side_resize(clip, size)
        h, w = clip.shape[-2:]
    return crop(clip, (h - size) // 2, (w - size) // 2, size, size)


def three_crops(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Short side to ``size``, then left/centre/right (or top/centre/bottom) ``size`` squares."""
    clip = short_side_resize(clip, size)
    h, w = clip.shape[-2:]
    if w >= h:
        return [crop(clip, (h - size) // 2, x, size, size) for x in (0, (w - size) // 2, w - size)]
    return [crop(clip, y, (w - size) // 2, size, size) for y in (0, (h - size) // 2, h - size)]


def random_resized_crop_params(
    h: int, w: int, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, height, width) as in torchvision's RandomResizedCrop, from a numpy generator."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def normalize(clip: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (T, C, H, W) -> float32 (C, T, H, W), (x/255 - mean) / std."""
    x = clip.permute(1, 0, 2, 3).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)
    return x.sub_(m).div_(s)


@dataclass
class ClipTransform:
    """Train: random resized crop to ``img_size`` (+ horizontal flip if ``hflip`` > 0).
    Eval: short side to ``img_size * eval_resize_ratio``, centre crop. Multi-view test: ``num_crops``
    of 1 (centre) or 3 (left/centre/right) spatial crops. Output float32 (C, T, H, W) normalised.

    ``hflip`` is a probability and defaults to 0: labels defined by motion direction (the demo,
    Something-Something) change meaning under a flip.
    """

    img_size: int = 224
    train: bool = True
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    eval_resize_ratio: float = 256 / 224
    num_crops: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def decode_short_side(self) -> int:
        """The short side worth decoding at (the decoder resizes there, cheaper than after)."""
        if not self.train and self.num_crops == 3:
            return self.img_size
        return int(round(self.img_size * self.eval_resize_ratio))

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator | None = None) -> list[torch.Tensor]:
        """uint8 (T, C, H, W) -> list of views, each float32 (C, T, H, W)."""
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            top, left, ch, cw = random_resized_crop_params(*clip.shape[-2:], rng, self.scale, self.ratio)
            out = resize(crop(clip, top, left, ch, cw), (self.img_size, self.img_size))
            if self.hflip > 0 and rng.random() < self.hflip:
                out = out.flip(-1)
            views = [out]
        elif self.num_crops == 3:
            views = three_crops(clip, self.img_size)
        else:
            views = [center_crop(short_side_resize(clip, self.decode_short_side), self.img_size)]
        return [normalize(v, self.mean, self.std) for v in views]
