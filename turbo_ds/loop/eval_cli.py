"""``scripts/eval.py``: a checkpoint or exported weights of any task, evaluated with all tokens on the
splits asked for."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from turbo_ds.cli import add_debug_flag, add_set_flag
from turbo_ds.config import TrainConfig, load_config
from turbo_ds.loop.evaluation import evaluate_split
from turbo_ds.loop.setup import setup

ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a turbo_ds checkpoint or exported weights on a split.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="DeepSpeed checkpoint folder (with 'latest') or a tag folder")
    src.add_argument("--weights", help="export written by scripts/export.py (.safetensors or .json)")
    p.add_argument(
        "--config", default=None, help="experiment YAML (default: the config stored with the weights)"
    )
    p.add_argument("--ds_config", default=str(ROOT / "ds_configs" / "zero0.json"))
    p.add_argument(
        "--split",
        nargs="+",
        default=None,
        help="split(s) to evaluate, e.g. --split val test: the weights are loaded once (default: "
        "data.test_split, else data.val_split)",
    )
    p.add_argument("--clips", type=int, default=None, help="temporal views (default: data.test_clips)")
    p.add_argument("--crops", type=int, default=None, help="spatial views, 1 or 3 (default: data.test_crops)")
    add_set_flag(p)
    p.add_argument("--output_dir", default=None, help="where eval_metrics.json and the MLflow store go")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow weights / checkpoint files that pickle objects beyond tensors (unpickling can run code)",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    add_debug_flag(p)
    return p


def _read_weights(args) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The task's state dict, the config stored with it, and where it came from."""
    from turbo_ds.engine.export import ENCODER_PREFIX, consolidate, read_export

    if args.weights:
        data = read_export(args.weights, trust_pickle=args.trust_pickle)
        prefix = data.get("encoder_prefix", ENCODER_PREFIX)
        sd = data.get("task_state_dict") or {prefix + k: v for k, v in data["state_dict"].items()}
        return sd, data["train_config"], args.weights
    sd, client = consolidate(args.checkpoint, trust_pickle=args.trust_pickle)
    return sd, client["config"], args.checkpoint


def _eval_config(args, stored_cfg: dict[str, Any]) -> TrainConfig:
    """``--config`` or the stored config (with ``--set``), for evaluating the given weights with all
    tokens: no pretrained files, no decoder, no activation checkpointing."""
    from turbo_ds.config import apply_overrides, config_from_dict, upgrade_stored_config
    from turbo_ds.tasks import without_weight_files

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(apply_overrides(upgrade_stored_config(stored_cfg), args.overrides))
    cfg = without_weight_files(cfg)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, activation_checkpointing="none"),
        pmae=dataclasses.replace(cfg.pmae, enabled=False),
        output_dir=args.output_dir or cfg.output_dir,
        data=dataclasses.replace(
            cfg.data,
            test_clips=args.clips or cfg.data.test_clips,
            test_crops=args.crops or cfg.data.test_crops,
        ),
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Consolidate weights (any task, ZeRO stage, world size), run the task's evaluations of each split
    asked for with all tokens, print their summaries, write ``eval_{split}_metrics.json`` per split and
    log them all to one MLflow run."""
    from turbo_ds.engine import distributed
    from turbo_ds.tracking import create_tracker, write_json

    args = build_parser().parse_args(argv)
    sd, stored_cfg, source = _read_weights(args)
    cfg = _eval_config(args, stored_cfg)
    splits = list(dict.fromkeys(args.split or [cfg.data.test_split or cfg.data.val_split]))
    specs_of: dict[str, list] = {}

    def load_weights(task) -> None:
        missing, unexpected = task.load_state_dict(
            {k: v for k, v in sd.items() if not k.startswith("model.pmae.")}, strict=False
        )
        if missing or unexpected:
            raise ValueError(
                f"weights from {source} do not fit the model: missing {missing}, unexpected {unexpected}"
            )
        for split in splits:  # every split checked before the first is evaluated
            if not (specs := task.eval_specs(split)):
                raise ValueError(f"task {cfg.task.name!r} has no evaluation for split {split!r}")
            specs_of[split] = specs

    s = setup(cfg, args.ds_config, prepare_task=load_weights)
    engine, out_dir = s.engine, Path(s.cfg.output_dir)
    metrics: dict[str, float] = {}
    for split, specs in specs_of.items():
        split_metrics, summary = evaluate_split(engine, s.task, s.cfg, split, specs, out_dir)
        if engine.is_rank_0:
            print(f"[turbo_ds] {source} on split '{split}':", flush=True)
            for line in summary:
                print(f"[turbo_ds]   {line}", flush=True)
            write_json(split_metrics, out_dir / f"eval_{split}_metrics.json")
        metrics.update(split_metrics)
    t = s.cfg.tracking
    tracker = create_tracker(
        t.enabled,
        engine.is_rank_0,
        out_dir,
        t.experiment,
        f"eval-{Path(source).name}-{'+'.join(splits)}",
        t.tracking_uri,
    )
    tracker.log_params(
        {
            "eval.source": source,
            "eval.split": ",".join(splits),
            "world_size": s.world_size,
            **s.task.tracking_params(),
        }
    )
    tracker.log_metrics(metrics, step=0)
    tracker.finish()
    distributed.destroy(verbose=args.debug)
    return metrics
