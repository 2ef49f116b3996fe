"""The grid of a sweep: ``--grid key=v1,v2`` options -> every combination, each with its folder name.

Values are YAML, as in ``--set`` (``0.5`` a number, ``true`` a boolean, ``[0.35, 1.0]`` a list,
``null``): the text after ``=`` is read as the items of a YAML flow sequence, so commas inside
brackets or quotes do not split. Each value goes back to the runs as its YAML text
(:func:`yaml_inline`), which reads back as the same value.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Any

from turbo_ds.config import ConfigError, _yaml

# Keys the sweep sets on every run itself, and what to use instead.
RESERVED = {
    "output_dir": "--out (each run gets <out>/<sweep name>/<combination>)",
    "tracking.experiment": "--experiment",
    "tracking.tracking_uri": "--tracking-uri",
    "tracking.run_name": "nothing (each run is named after its combination)",
    "tracking.enabled": "nothing (a sweep logs every run to MLflow)",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
MAX_SLUG_LEN = 200


def yaml_inline(value: Any) -> str:
    """``value`` as one line of YAML that reads back as ``value`` (``0.5``, ``true``, ``'0.5'``)."""
    text = _yaml().safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    lines = text.strip().splitlines()
    return "\n".join(lines[:-1] if lines[-1] == "..." else lines)  # a bare scalar ends its document


def value_text(value: Any) -> str:
    """How a value reads in folder names and tags: a string as typed (YAML 1.1 reads ``1e-4`` as one),
    anything else as YAML (``0.5``, ``true``, ``[0.35, 1.0]``)."""
    return value if isinstance(value, str) else yaml_inline(value)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["a.b=1,2", "c=x,y"]`` -> ``{"a.b": [1, 2], "c": ["x", "y"]}``, in the order given."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r} must look like section.key=value1,value2")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
        try:
            values = _yaml().safe_load(f"[{raw}]")
        except Exception as e:  # yaml.YAMLError; one line, not the parser's report
            raise ConfigError(f"--grid {item!r}: not a comma-separated list of YAML values") from e
        if not values:
            raise ConfigError(f"--grid {key} has no values")
        texts = [yaml_inline(v) for v in values]
        if dups := sorted({t for t in texts if texts.count(t) > 1}):
            raise ConfigError(f"--grid {key} lists {', '.join(dups)} more than once")
        grid[key] = values
    return grid


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def check_keys(grid: dict[str, list[Any]], set_keys: list[str]) -> None:
    """A key the sweep sets itself, or one both varied and fixed (or inside another): ConfigError."""
    keys = list(grid)
    for key in [*keys, *set_keys]:
        for reserved, instead in RESERVED.items():
            if _overlap(key, reserved):
                raise ConfigError(f"{key} is set by the sweep for every run; use {instead}")
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if _overlap(a, b):
                raise ConfigError(f"--grid {a} and --grid {b} overlap; vary one of them")
        for b in set_keys:
            if _overlap(a, b):
                raise ConfigError(f"{a} is both varied (--grid) and fixed (--set {b}=...); drop one")
    if any(_overlap(k, "tracking.tags") for k in keys):
        raise ConfigError("tracking.tags cannot be varied; set fixed tags with --set tracking.tags={...}")


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first key varying slowest (the order of nested loops)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def slug(combo: dict[str, Any]) -> str:
    """The folder and MLflow run name of a combination: ``token_dropout.drop_ratio=0.5,pmae.enabled=false``.
    Characters a folder name should not hold become ``_``, and a short hash of the exact combination is
    then appended, so that two combinations do not share a folder."""
    raw = ",".join(f"{k}={value_text(v)}" for k, v in combo.items())
    safe = _UNSAFE.sub("_", raw)
    if safe != raw or len(safe) > MAX_SLUG_LEN:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_SLUG_LEN]}-{digest}"
    return safe
