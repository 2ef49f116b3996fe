"""The package's layers (docs/architecture.md): a module imports only from its own package and from
layers below it, lazy imports inside functions included (a cycle hidden by a lazy import is still a
cycle). A command line (``__main__``) sits above everything and may call into any layer."""

from __future__ import annotations

import ast

from helpers import ROOT

# Bottom to top; units in one row do not import each other.
LAYERS = [
    ("signals",),
    ("config",),
    ("models", "data", "losses", "metrics"),
    ("tasks",),
    ("engine", "tracking"),
    ("cli",),
    ("plan",),
    ("loop",),
    ("measure",),
    ("sweep", "compare"),
]
LEVEL = {unit: level for level, row in enumerate(LAYERS) for unit in row}


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "turbo_ds":
                yield node.lineno, [f"turbo_ds.{a.name}" for a in node.names]
            elif node.module.startswith("turbo_ds."):
                yield node.lineno, [node.module]
        elif isinstance(node, ast.Import):
            yield node.lineno, [a.name for a in node.names if a.name.startswith("turbo_ds.")]


def test_every_import_points_down_the_layers():
    package = ROOT / "turbo_ds"
    units, wrong = set(), []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.name == "__main__" or rel.as_posix() == "turbo_ds/__init__":
            continue
        here = _unit(".".join(rel.parts))
        units.add(here)
        for line, modules in _imports(ast.parse(path.read_text(), str(path))):
            for module in modules:
                there = _unit(module)
                if there != here and LEVEL.get(there, 99) >= LEVEL.get(here, -1):
                    wrong.append(f"{rel.as_posix()}.py:{line} ({here}) imports {module} ({there})")
    assert units <= set(LEVEL), f"a package the layers do not place: {sorted(units - set(LEVEL))}"
    assert wrong == []
