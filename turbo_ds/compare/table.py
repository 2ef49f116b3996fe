"""The comparison table: the params that differ, headline metrics, time, throughput, memory, and the
ratios against a baseline run; printed aligned, or written as CSV at full precision.

speed-up = the run's clips/s / the baseline's (= the baseline's time per step / the run's when both
train on the same clips per step); memory ratio = the baseline's peak memory / the run's (2.0: half
the memory), step memory ratio the same for the first step's measured tensor peak; delta = the run's primary headline metric - the baseline's.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo_ds.compare.runs import CompareError, Run, find_run
from turbo_ds.compare.summary import DROP_RATIO, RunSummary
from turbo_ds.tracking import SWEEP_VARIED_TAG

# Params that differ between any two runs without telling them apart (where a run wrote, what it was
# called) or that change nothing trained; kept out of the differing params.
NOISE_PARAMS = {
    "output_dir",
    "tracking.run_name",
    "tracking.tracking_uri",
    "tracking.experiment",
    "tracking.enabled",
    "train.progress_bar",
}
NOISE_PREFIXES = ("tracking.tags",)
# Column order of the differing params: what a Turbo sweep varies first, bookkeeping (ds.*, version.*) last.
PARAM_ORDER = (
    "token_dropout.",
    "pmae.",
    "model.",
    "task.",
    "data.",
    "optim.",
    "train.",
    "seed",
    "checkpoint.",
)
MISSING = "—"


def _noise(key: str) -> bool:
    return key in NOISE_PARAMS or key.startswith(NOISE_PREFIXES)


def differing_params(runs: list[Run]) -> list[str]:
    """Params whose value is not the same in every run that logged params (a key a run lacks counts
    as a different value; a run without any params is left out of the decision)."""
    with_params = [r for r in runs if r.params]
    keys = dict.fromkeys(k for r in with_params for k in r.params if not _noise(k))
    differ = [k for k in keys if len({r.params.get(k) for r in with_params}) > 1]
    varied = [k.strip() for r in runs for k in r.tags.get(SWEEP_VARIED_TAG, "").split(",") if k.strip()]
    first = {k: i for i, k in enumerate(dict.fromkeys(varied))}

    def order(key: str) -> tuple[int, int, str]:
        group = next((i for i, p in enumerate(PARAM_ORDER) if key.startswith(p)), len(PARAM_ORDER))
        return (first.get(key, len(first)), group, key)

    return sorted(differ, key=order)


def choose_baseline(summaries: list[RunSummary], key: str | None = None) -> tuple[RunSummary | None, str]:
    """``key``'s run (an id, a name, an id prefix), else the first run started with drop ratio 0; and a
    sentence saying which and why (or why there is none)."""
    if key:
        matches = find_run([s.run for s in summaries], key)
        if not matches:
            raise CompareError(f"--baseline {key!r}: no selected run has that id or name")
        if len(matches) > 1:
            ids = ", ".join(r.run_id for r in matches)
            raise CompareError(
                f"--baseline {key!r}: {len(matches)} selected runs match it ({ids}); pass a run id"
            )
        base = next(s for s in summaries if s.run is matches[0])
        return base, f"baseline: {label(base.run)}, chosen with --baseline"
    dense = [s for s in summaries if s.drop_ratio == 0]
    if not dense:
        return None, (
            f"no baseline: no selected run has {DROP_RATIO} 0 and --baseline was not given, so no speed-up, "
            "memory ratio or delta"
        )
    note = f"baseline: {label(dense[0].run)}, the run with {DROP_RATIO} 0"
    if len(dense) > 1:
        note += f" started first ({len(dense)} runs have drop ratio 0; --baseline picks another)"
    return dense[0], note


def label(run: Run) -> str:
    return f"{run.name} ({run.run_id[:8]})"


@dataclass
class Column:
    key: str  # the CSV header
    header: str  # the printed header, units included
    kind: str  # how a value is printed: text, id, flag, metric, delta, seconds, rate, mb, ratio
    text: bool = True  # in the printed and HTML tables (False: the CSV only)


@dataclass
class Table:
    columns: list[Column]
    rows: list[dict[str, Any]]
    summaries: list[RunSummary]
    baseline: RunSummary | None
    primary: str | None  # the headline metric of the delta column and the drop-ratio plot
    notes: list[str] = field(default_factory=list)

    def column(self, key: str) -> list[Any]:
        return [row.get(key) for row in self.rows]


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return None
    return num / den


def build_table(summaries: list[RunSummary], baseline: RunSummary | None, baseline_note: str) -> Table:
    runs = [s.run for s in summaries]
    params = differing_params(runs)
    headline = list(dict.fromkeys(k for s in summaries for k in s.headline))
    primary = headline[0] if headline else None
    columns = [
        Column("run", "run", "text"),
        Column("run_id", "id", "id"),
        Column("status", "status", "text"),
        Column("baseline", "base", "flag"),
    ]
    if len({r.experiment for r in runs}) > 1:
        columns.append(Column("experiment", "experiment", "text"))
    columns += [Column(p, p, "text") for p in params]
    columns += [Column(h, h, "metric") for h in headline]
    if baseline is not None and primary is not None:
        columns.append(Column(f"delta {primary}", f"Δ {primary}", "delta"))
    columns += [
        Column("train_time_s", "train time (s)", "seconds"),
        Column("clips_per_s", "clips/s", "rate"),
        Column("tokens_per_s", "tokens/s", "rate"),
        Column("peak_mem_mb", "peak mem (MiB)", "mb"),
        Column("step_mem_mb", "step mem (MiB)", "mb"),
        Column("data_wait_pct", "data wait (%)", "percent"),
    ]
    if baseline is not None:
        columns += [
            Column("speedup", "speed-up (x)", "ratio"),
            Column("memory_ratio", "mem ratio (x)", "ratio"),
            Column("step_memory_ratio", "step mem ratio (x)", "ratio"),
        ]
    columns += [
        Column("experiment", "experiment", "text", text=False),
        Column("tracking_uri", "tracking URI", "text", text=False),
        Column("notes", "notes", "text", text=False),
    ]
    seen: set[str] = set()  # experiment once: the printed one when it differs between runs
    columns = [c for c in columns if not (c.key in seen or seen.add(c.key))]
    rows = []
    for s in summaries:
        r = s.run
        row: dict[str, Any] = {
            "run": r.name,
            "run_id": r.run_id,
            "status": r.status,
            "baseline": s is baseline,
            "experiment": r.experiment,
            "tracking_uri": r.tracking_uri,
            "notes": "; ".join(s.notes),
            "train_time_s": s.train_time_s,
            "clips_per_s": s.clips_per_s,
            "tokens_per_s": s.tokens_per_s,
            "peak_mem_mb": s.peak_mem_mb,
            "step_mem_mb": s.step_mem_mb,
            "data_wait_pct": s.data_wait_pct,
        }
        row.update({p: r.params.get(p) for p in params})
        row.update({h: r.metrics.get(h) for h in headline})
        if baseline is not None:
            b = baseline
            if primary is not None:
                mine, theirs = r.metrics.get(primary), b.run.metrics.get(primary)
                row[f"delta {primary}"] = mine - theirs if mine is not None and theirs is not None else None
            row["speedup"] = _ratio(s.clips_per_s, b.clips_per_s)
            row["memory_ratio"] = _ratio(b.peak_mem_mb, s.peak_mem_mb)
            row["step_memory_ratio"] = _ratio(b.step_mem_mb, s.step_mem_mb)
        rows.append(row)
    notes = [baseline_note]
    if baseline is not None and (baseline.clips_per_s is None or baseline.peak_mem_mb is None):
        notes.append(
            f"the baseline {label(baseline.run)} logged no throughput or memory: its ratios are missing"
        )
    notes += [f"{label(s.run)}: {'; '.join(s.notes)} (status {s.run.status})" for s in summaries if s.notes]
    return Table(columns, rows, summaries, baseline, primary, notes)


def format_value(value: Any, kind: str, width: int | None = 28) -> str:
    """A value as printed: ``—`` when missing, numbers rounded by kind, long text cut to ``width``."""
    if value is None or value == "":
        return MISSING if kind != "flag" else ""
    if kind == "flag":
        return "*" if value else ""
    if kind == "id":
        return str(value)[:8]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    formats = {
        "metric": "{:.4g}",
        "delta": "{:+.3g}",
        "seconds": "{:,.1f}",
        "rate": "{:,.1f}",
        "mb": "{:,.0f}",
        "percent": "{:.1f}",
    }
    if kind in formats:
        return formats[kind].format(value)
    if kind == "ratio":
        return f"{value:.2f}"
    text = str(value)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def format_text(table: Table) -> str:
    """The table with aligned columns (numbers to the right), then its notes."""
    cols = [c for c in table.columns if c.text]
    cells = [[format_value(row.get(c.key), c.kind) for c in cols] for row in table.rows]
    widths = [max([len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        parts = [
            v.ljust(w) if c.kind in ("text", "id", "flag") else v.rjust(w)
            for v, w, c in zip(values, widths, cols, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([c.header for c in cols]), line(["-" * w for w in widths])]
    out += [line(values) for values in cells]
    return "\n".join(out + [""] + table.notes)


def write_csv(table: Table, path: str | Path) -> Path:
    """One row per run, every column (the CSV-only ones too), numbers at full precision, missing empty."""
    path = Path(path)

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value) if isinstance(value, float) else str(value)

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([c.key for c in table.columns])
        writer.writerows([[cell(row.get(c.key)) for c in table.columns] for row in table.rows])
    return path
