"""``scripts/train.py``: parse the flags, train, tear the process group down (under ``deepspeed``,
``torchrun`` or plain ``python``)."""

from __future__ import annotations

import argparse
import os

from turbo_ds.cli import Preempted, add_debug_flag, add_set_flag
from turbo_ds.config import load_config
from turbo_ds.loop.preemption import StopRequest
from turbo_ds.loop.trainer import Trainer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a token-dropout video ViT with DeepSpeed (turbo_ds).")
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("--ds_config", required=True, help="DeepSpeed JSON (see ds_configs/)")
    add_set_flag(p)
    p.add_argument(
        "--resume", default=None, help="'latest' (the run folder's latest checkpoint) or a checkpoint path"
    )
    p.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # passed by the deepspeed launcher
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    from turbo_ds.engine import distributed

    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    # Before the (slow) setup: a scheduler's signal during it still ends in a checkpoint and status 75.
    # Kept until the process group is gone: a launcher that SIGTERMs the ranks still tearing down
    # (deepspeed does once one rank has exited non-zero) must not kill them half way.
    stop = StopRequest(cfg.train.stop_signals).install()
    try:
        trainer = Trainer(cfg, args.ds_config, resume=args.resume, stop_request=stop)
        try:
            final = trainer.fit()
        except Preempted:
            distributed.destroy(verbose=args.debug)  # every rank agreed to stop: wait for all of them
            raise
        distributed.destroy(verbose=args.debug)  # after a barrier: no rank still talks to this one
    finally:
        stop.restore()
    return final
