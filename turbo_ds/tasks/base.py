"""The task contract: an ``nn.Module`` (what the DeepSpeed engine wraps) mapping a batch to named losses.

``forward(batch) -> TaskOutput``; ``loss == sum(losses.values())`` with weights applied inside, and
``metrics`` are per-batch means (the loop averages them over batches and ranks weighted by
``batch_size``). The loop knows nothing else about the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TaskOutput:
    loss: torch.Tensor
    """Scalar to back-propagate: the sum of ``losses``."""
    losses: dict[str, torch.Tensor]
    """Named weighted scalar losses, e.g. ``{"cls_loss": ..., "mae_loss": ...}``."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    """Named per-batch means (e.g. ``top1``, ``top5`` in percent)."""
    batch_size: int = 0
    """Samples in this batch (the weight of ``metrics`` when averaging)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Anything else a caller may want (logits, token counts); not used by the loop."""
