"""What a sweep will do (its specification): its name and id, its MLflow store, and each combination's
overrides, folder and command; every combination's config is validated here, before any run starts.

The name is the sweep's identity: the same command gives the same name (default: the config's stem
and the varied keys), hence the same id, folder and experiment, so a rerun finds what is done.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo_ds.config import ConfigError, load_config
from turbo_ds.measure.launch import launch_command, train_args
from turbo_ds.sweep.grid import _UNSAFE, check_keys, combinations, parse_grid, slug, value_text, yaml_inline
from turbo_ds.tracking import (
    SWEEP_ID_TAG,
    SWEEP_NAME_TAG,
    SWEEP_VARIED_TAG,
    is_local_store,
    local_artifacts,
    store_uri,
    sweep_value_tag,
)

DEFAULT_OUT = "runs/sweeps"
COMPARE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare.py"


@dataclass
class Combination:
    index: int
    """1-based position in the sweep."""
    values: dict[str, Any]
    """The varied keys' values."""
    slug: str
    """Folder and MLflow run name."""
    run_dir: Path

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={yaml_inline(v)}" for k, v in self.values.items()]

    @property
    def finished(self) -> bool:
        """Rank 0 writes ``final_metrics.json`` once the run has ended (``Trainer._finish``)."""
        return (self.run_dir / "final_metrics.json").exists()

    @property
    def checkpoint(self) -> str | None:
        """The tag a ``--resume latest`` continues from, if the run saved one."""
        latest = self.run_dir / "checkpoints" / "latest"
        return latest.read_text().strip() if latest.exists() else None


@dataclass
class Sweep:
    name: str
    sweep_id: str
    folder: Path
    """``<out>/<name>``: the run folders, sweep.json and (by default) the MLflow store."""
    config: Path
    ds_config: Path
    num_gpus: int
    sets: list[str]
    """The ``--set`` overrides every run gets."""
    grid: dict[str, list[Any]]
    experiment: str
    tracking_uri: str
    artifact_location: str | None
    """Given to a new experiment; None = the store's (a server's) own."""
    base_tags: dict[str, str] = field(default_factory=dict)
    """``tracking.tags`` of the config and ``--set``: the sweep's tags are added to them."""
    combos: list[Combination] = field(default_factory=list)
    debug: bool = False

    def tags(self, combo: Combination) -> dict[str, str]:
        tags = {
            **self.base_tags,
            SWEEP_ID_TAG: self.sweep_id,
            SWEEP_NAME_TAG: self.name,
            SWEEP_VARIED_TAG: ",".join(self.grid),
        }
        tags.update({sweep_value_tag(k): value_text(v) for k, v in combo.values.items()})
        return tags

    def run_overrides(self, combo: Combination) -> list[str]:
        """Every ``--set`` of one run. The tags go as one mapping (JSON, which YAML reads): their names
        hold dots, which a dotted ``tracking.tags.<name>`` path would split into nested sections."""
        own = {
            "output_dir": str(combo.run_dir),
            "tracking.experiment": self.experiment,
            "tracking.tracking_uri": self.tracking_uri,
            "tracking.run_name": combo.slug,
        }
        return [
            *self.sets,
            *combo.overrides,
            *(f"{k}={yaml_inline(v)}" for k, v in own.items()),
            f"tracking.tags={json.dumps(self.tags(combo))}",
        ]

    def command(self, combo: Combination, master_port: int | None = None) -> list[str]:
        """One process runs as ``python scripts/train.py`` (no launcher to start, same trainer); more
        under the deepspeed launcher. ``--resume latest`` starts from scratch without a checkpoint."""
        port = master_port if master_port is not None else "<free port>"
        args = train_args(self.config, self.ds_config, self.run_overrides(combo))
        args += ["--resume", "latest"] + (["--debug"] if self.debug else [])
        return launch_command(args, self.num_gpus, port)

    def compare_command(self) -> str:
        import shlex

        script = (
            os.path.relpath(COMPARE_SCRIPT) if COMPARE_SCRIPT.is_relative_to(Path.cwd()) else COMPARE_SCRIPT
        )
        parts = ["python", str(script), "--experiment", self.experiment, "--tracking-uri", self.tracking_uri]
        return shlex.join([*parts, "--out", str(self.folder / "report")])


def default_name(config: str | Path, keys: list[str]) -> str:
    """``demo_classification__token_dropout.drop_ratio+pmae.enabled``."""
    return _UNSAFE.sub("_", f"{Path(config).stem}__{'+'.join(keys)}")


def sweep_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:12]


def store(folder: Path, configured: str | None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment): ``--tracking-uri``, else
    ``$MLFLOW_TRACKING_URI``, else ``<folder>/mlflow.db`` (:func:`turbo_ds.tracking.store_uri`, the
    trainer's rule: each run gets the URI as ``tracking.tracking_uri``). A local store (sqlite, file)
    gets the sweep folder's ``mlartifacts``: MLflow's own default is ``./mlruns`` in the current
    directory. A server keeps its own artifact root."""
    uri = store_uri(folder, configured)
    return uri, local_artifacts(folder) if is_local_store(uri) else None


def _set_key(item: str) -> str:
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} must look like section.key=value")
    return key.strip()


def build(
    config: str | Path,
    ds_config: str | Path,
    grid_items: list[str],
    sets: list[str] | None = None,
    num_gpus: int = 1,
    name: str | None = None,
    out: str | Path = DEFAULT_OUT,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    debug: bool = False,
) -> Sweep:
    """The plan of a sweep, every combination's config loaded and checked (ConfigError, ValueError,
    FileNotFoundError: one line naming the combination and the problem)."""
    from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config

    sets = list(sets or [])
    if num_gpus < 1:
        raise ConfigError(f"--num_gpus {num_gpus}: must be >= 1")
    if not grid_items:
        raise ConfigError("a sweep needs at least one --grid key=value1,value2")
    grid = parse_grid(grid_items)
    check_keys(grid, [_set_key(s) for s in sets])
    name = name or default_name(config, list(grid))
    if _UNSAFE.search(name) or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use letters, digits and . _ = , + - only (it names a folder)")
    folder = Path(out).resolve() / name
    uri, artifacts = store(folder, tracking_uri)
    base = load_config(config, sets)  # the config and --set alone: their errors name no combination
    load_ds_config(ds_config)
    if not base.tracking.enabled:
        raise ConfigError("tracking.enabled is false: a sweep logs every run to MLflow")
    sweep = Sweep(
        name=name,
        sweep_id=sweep_id(name),
        folder=folder,
        config=Path(config).resolve(),
        ds_config=Path(ds_config).resolve(),
        num_gpus=num_gpus,
        sets=sets,
        grid=grid,
        experiment=experiment or name,
        tracking_uri=uri,
        artifact_location=artifacts,
        base_tags=dict(base.tracking.tags),
        debug=debug,
    )
    combos = combinations(grid)
    for i, values in enumerate(combos, 1):
        s = slug(values)
        sweep.combos.append(Combination(i, values, s, folder / s))
    seen: dict[str, Combination] = {}
    for c in sweep.combos:
        if c.slug in seen:
            raise ConfigError(
                f"combinations {seen[c.slug].values} and {c.values} would share the folder {c.slug}"
            )
        seen[c.slug] = c
        where = f"combination {c.index}/{len(combos)} ({c.slug})"
        try:
            cfg = load_config(config, sweep.run_overrides(c))
            fill_ds_config(ds_config, cfg, world_size=num_gpus)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from e
    return sweep
