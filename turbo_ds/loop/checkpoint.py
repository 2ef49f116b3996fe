"""Checkpoints of the loop: where they go, when one is due, saving and what a ``--resume`` loads.
What goes into one is the trainer's (``Trainer.state_dict``); the files are the engine's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from turbo_ds.config import TrainConfig

CHECKPOINT_SUBDIR = "checkpoints"


class Checkpointer:
    """Saves into ``output_dir/checkpoints/global_step{N}`` every ``checkpoint.every_steps`` steps."""

    def __init__(
        self, engine, cfg: TrainConfig, heartbeat: Callable[[str], None], log: Callable[[str], None]
    ):
        self.engine, self.cfg, self.heartbeat, self.log = engine, cfg, heartbeat, log
        self.dir = Path(cfg.output_dir) / CHECKPOINT_SUBDIR

    def due(self, step: int) -> bool:
        """A checkpoint during training after ``step`` (the final one is ``checkpoint.save_final``'s)."""
        every = self.cfg.checkpoint.every_steps
        return step < self.cfg.train.max_steps and bool(every) and step % every == 0

    def save(self, step: int, client_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        """A collective: every rank writes its shards and ``rank_state``."""
        tag = f"global_step{step}"
        self.heartbeat(f"the checkpoint {tag} (every rank writes its shards, then a barrier)")
        path = self.engine.save(self.dir, tag, client_state, rank_state)
        self.log(f"saved checkpoint {path}")
        return path

    def load(self, resume: str) -> tuple[dict[str, Any], dict[str, Any] | None, Path] | None:
        """``resume`` (``latest``: this run's latest checkpoint, or a path) into the engine: (client state,
        this rank's state, path); None for ``latest`` when there is no checkpoint yet."""
        path = self.dir if resume == "latest" else Path(resume)
        if resume == "latest" and not (path / "latest").exists() and not (path / "latest_universal").exists():
            self.log(f"--resume latest: no checkpoint under {path}, starting from scratch")
            return None
        client, rank_state = self.engine.load(path)
        return client, rank_state, path
