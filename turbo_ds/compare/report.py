"""``report.html``: the table, the definitions and the plots in one self-contained page (inline CSS, PNGs
as base64 ``data:`` URIs, no script, nothing fetched), so it opens from disk or an e-mail anywhere."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from turbo_ds.compare.plots import Plot
from turbo_ds.compare.table import Table, format_value

DEFINITIONS = (
    (
        "training time",
        "Cumulative seconds spent in training steps, without evaluation or checkpointing: the sum over the "
        "logging windows of train/step_time_s (the window's mean step time) times the window's steps. "
        "For a run never resumed it equals the logged train/time_s. This is the wall-clock axis of the plots.",
    ),
    (
        "clips/s",
        "Training throughput: train/avg_clips_per_s (all training clips / training time, logged at the end), "
        "else the mean of the logged train/clips_per_s windows (a run that stopped early).",
    ),
    (
        "tokens/s",
        "The mean of the logged train/tokens_per_s windows (tokens the encoder saw, after dropout).",
    ),
    (
        "peak mem",
        "The largest train/peak_mem_mb over the run (MiB, the largest rank: CUDA allocator peak on GPU, "
        "peak RSS on the CPU), else memory/measured_peak_mb (the first step's measured peak).",
    ),
    (
        "speed-up",
        "The run's clips/s / the baseline's. With the same clips per step this is the baseline's time per "
        "step / the run's; above 1: faster than the baseline.",
    ),
    ("mem ratio", "The baseline's peak memory / the run's; 2.0: the run needs half the memory."),
    (
        "step mem",
        "memory/measured_peak_mb: the tensors of the first training step (MiB, the largest rank), what token "
        "dropout and checkpointing change; on the CPU peak mem is the process's resident set, mostly libraries.",
    ),
    ("step mem ratio", "The baseline's step memory / the run's."),
    ("Δ", "The run's value of the first headline metric minus the baseline's (quality lost when negative)."),
    (
        "headline metrics",
        "The run's turbo_ds.headline tag, else the task's defaults (classification: top1, top5; video_text: "
        "t2v_r1, v2t_r1, align_r1, align_roc_auc; long_video: top1) on every eval prefix, else every "
        "evaluation metric. The value is the last one logged (the final evaluation of a finished run).",
    ),
    (
        "differing params",
        "Config params whose values are not the same in all runs; bookkeeping that always differs "
        "(output_dir, tracking.run_name, tracking.experiment, tracking.tracking_uri...) is left out.",
    ),
    (
        "status",
        "MLflow's: FINISHED; FAILED (an error); KILLED (stopped by a scheduler's signal); RUNNING (still "
        "running, or died without closing the run). Rows not FINISHED are marked.",
    ),
)

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
div.scroll { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde8e8; }
tr.baseline td { font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; }
dt { font-weight: bold; margin-top: 0.4em; }
.skipped { color: #a33; font-size: 0.9em; }
"""

_TEXT_KINDS = ("text", "id", "flag")


def _table_html(table: Table) -> str:
    cols = [c for c in table.columns if c.text]
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    rows = []
    for row in table.rows:
        classes = [
            name
            for name, on in (("failed", row["status"] != "FINISHED"), ("baseline", row["baseline"]))
            if on
        ]
        cells = []
        for c in cols:
            text = format_value(row.get(c.key), c.kind, width=None)
            cls = "" if c.kind in _TEXT_KINDS else ' class="num"'
            title = f' title="{html.escape(str(row["run_id"]))}"' if c.kind == "id" else ""
            cells.append(f"<td{cls}{title}>{html.escape(text)}</td>")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f"<tr{attr}>{''.join(cells)}</tr>")
    # In a scrolling box: a sweep's table is wider than a window, and the page must stay readable.
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _plot_html(plot: Plot) -> str:
    parts = [f"<h3>{html.escape(plot.title)}</h3>"]
    if plot.path is not None:
        data = base64.b64encode(Path(plot.path).read_bytes()).decode("ascii")
        parts.append(f'<img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">')
    if plot.skipped or plot.path is None:
        items = "".join(
            f"<li>{html.escape(s)}</li>" for s in plot.skipped or ["no selected run has the data"]
        )
        what = "Left out of the plot" if plot.path is not None else "Not drawn"
        parts.append(f'<p class="skipped">{what}:</p><ul class="skipped">{items}</ul>')
    return "\n".join(parts)


def write_html(
    table: Table, plots: Sequence[Plot], path: str | Path, title: str, stores: Sequence[str], created: str
) -> Path:
    path = Path(path)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    store_items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in stores)
    definitions = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>" for t, d in DEFINITIONS)
    body = "\n".join(
        [
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Report made {html.escape(created)} from {len(table.rows)} run(s) in {len(stores)} store(s).</p>",
            '<h2 id="table">Runs</h2>',
            _table_html(table),
            f"<ul>{notes}</ul>",
            '<h2 id="definitions">Definitions</h2>',
            f"<dl>{definitions}</dl>",
            '<h2 id="plots">Plots</h2>',
            *(_plot_html(p) for p in plots),
            '<h2 id="stores">Stores</h2>',
            f"<ul>{store_items}</ul>",
        ]
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path
