"""The comparison's PNG plots. A run without the data a plot needs is left out of it and named in the
plot's ``skipped`` list (the report prints them); a plot no run has data for is not written.

The time axis is the cumulative training time of :func:`turbo_ds.compare.summary.time_axis`: seconds
in training steps only, so evaluation and checkpointing do not count against a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbo_ds.compare.summary import DROP_RATIO, RunSummary
from turbo_ds.compare.table import Table, label

TIME_LABEL = "cumulative training time (s; steps only, no eval or checkpointing)"


@dataclass
class Plot:
    name: str  # the file's stem
    title: str
    path: Path | None = None  # None: no run had the data
    skipped: list[str] = field(default_factory=list)  # "run (id): why"


def _figure(
    panels: int = 1, width: float = 7.0, height: float = 4.2, per_row: int = 3
) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` axes, ``per_row`` to a row (a run with many eval metrics stays readable)."""
    # Figure, not pyplot: no global backend or figure registry, the Agg canvas is enough for a PNG.
    from matplotlib.figure import Figure

    ncols, nrows = min(panels, per_row), -(-panels // per_row)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig: Any, plot: Plot, out_dir: Path) -> Plot:
    plot.path = out_dir / f"{plot.name}.png"
    fig.suptitle(plot.title)
    fig.savefig(plot.path, dpi=100)
    return plot


def _name(table: Table, s: RunSummary) -> str:
    """The run's legend entry: name, short id, and [baseline] or its status when not FINISHED."""
    marks = (["baseline"] if s is table.baseline else []) + (
        [s.run.status] if s.run.status != "FINISHED" else []
    )
    return label(s.run) + "".join(f" [{m}]" for m in marks)


def _color(summaries: list[RunSummary], s: RunSummary) -> str:
    return f"C{summaries.index(s) % 10}"  # the same colour for a run in every plot


# The task's own loss beside the total: with Partial-MAE the total adds the MAE loss, which a dense run
# (drop ratio 0: nothing to reconstruct) does not have, so totals alone mislead across drop ratios.
TASK_LOSSES = ("train/cls_loss", "train/nce_loss")


def loss_curves(table: Table, out_dir: Path, against_time: bool) -> Plot:
    name, what = ("loss_vs_time", "training time") if against_time else ("loss_vs_step", "step")
    keys = ["train/loss"] + [k for k in TASK_LOSSES if any(k in s.run.metrics for s in table.summaries)][:1]
    plot = Plot(name, f"{' and '.join(keys)} against {what}")
    fig, axes = _figure(len(keys))
    drawn = 0
    for ax, key in zip(axes, keys, strict=True):
        for s in table.summaries:
            points = s.run.history(key)
            if not points:
                plot.skipped.append(f"{label(s.run)}: no {key}")
                continue
            if against_time and s.axis is None:
                plot.skipped.append(f"{label(s.run)}: no train/step_time_s for the time axis")
                continue
            x = [s.axis.at(step) if against_time else step for step, _ in points]
            marker = "o" if len(points) <= 20 else None  # a run stopped after one window is a dot
            ax.plot(
                x,
                [v for _, v in points],
                marker=marker,
                ms=3,
                label=_name(table, s),
                color=_color(table.summaries, s),
            )
            drawn += 1
        ax.set_xlabel(TIME_LABEL if against_time else "step")
        ax.set_ylabel(key + (" (task + MAE)" if key == "train/loss" and len(keys) > 1 else ""))
    plot.skipped = list(dict.fromkeys(plot.skipped))
    if not drawn:
        return plot
    axes[0].legend(fontsize="small")
    return _save(fig, plot, out_dir)


def _eval_time(s: RunSummary, step: int) -> float | None:
    if s.axis is not None:
        return s.axis.at(step)
    return dict(s.run.history("train/time_s")).get(step)  # logged with every evaluation


def eval_curves(table: Table, out_dir: Path) -> Plot:
    metrics = list(dict.fromkeys(k for s in table.summaries for k in s.headline))
    plot = Plot("eval_vs_time", "headline eval metrics against training time")
    if not metrics:
        plot.skipped.append("no run logged an evaluation metric")
        return plot
    fig, axes = _figure(len(metrics), width=5.0)
    missing: dict[str, list[str]] = {}
    drawn = 0
    for ax, metric in zip(axes, metrics, strict=True):
        for s in table.summaries:
            points = [(t, v) for step, v in s.run.history(metric) if (t := _eval_time(s, step)) is not None]
            if not points:
                missing.setdefault(label(s.run), []).append(metric)
                continue
            ax.plot(*zip(*points, strict=True), "o-", label=_name(table, s), color=_color(table.summaries, s))
            drawn += 1
        ax.set_title(metric)
    plot.skipped = [f"{run}: no {', '.join(ms)} with a training time" for run, ms in missing.items()]
    if not drawn:
        return plot
    axes[0].legend(fontsize="small")
    fig.supxlabel(TIME_LABEL, fontsize="small")
    return _save(fig, plot, out_dir)


def throughput_memory(table: Table, out_dir: Path) -> Plot:
    plot = Plot("throughput_memory", "training throughput, data wait and peak memory per run")
    fig, axes = _figure(4, width=4.5, height=max(2.5, 0.45 * len(table.summaries) + 1.2), per_row=4)
    drawn = 0
    for i, (ax, attr, xlabel, what) in enumerate(
        (
            (axes[0], "clips_per_s", "clips/s (training)", "throughput"),
            (axes[1], "data_wait_pct", "data wait (% of step time, slowest rank)", "data wait"),
            (axes[2], "peak_mem_mb", "peak memory (MiB, largest rank)", "peak memory"),
            (axes[3], "step_mem_mb", "first step's tensors (MiB, largest rank)", "step memory"),
        )
    ):
        have = [s for s in table.summaries if getattr(s, attr) is not None]
        plot.skipped += [f"{label(s.run)}: no {what}" for s in table.summaries if getattr(s, attr) is None]
        if not have:
            continue
        names = [_name(table, s) for s in have]
        ax.barh(names, [getattr(s, attr) for s in have], color=[_color(table.summaries, s) for s in have])
        ax.invert_yaxis()  # the table's order, top to bottom
        ax.set_xlabel(xlabel)
        if i and len(have) == len(table.summaries):
            ax.tick_params(labelleft=False)  # the same rows as the first panel: its names say which
        drawn += len(have)
    if not drawn:
        return plot
    return _save(fig, plot, out_dir)


def drop_ratio_tradeoff(table: Table, out_dir: Path) -> Plot:
    """Speed-up (clips/s without a baseline) and the primary metric against drop ratio; not drawn when
    the drop ratio does not vary among the runs."""
    ratios = table.baseline is not None
    speed_key, speed_label = (
        ("speedup", "speed-up (x, clips/s / baseline's)") if ratios else ("clips_per_s", "clips/s")
    )
    primary = table.primary
    plot = Plot("drop_ratio", f"speed-up and {primary or 'quality'} against {DROP_RATIO}")
    if len({s.drop_ratio for s in table.summaries if s.drop_ratio is not None}) < 2:
        plot.skipped.append(f"{DROP_RATIO} is the same in every run")
        return plot
    fig, axes = _figure(2, width=5.0)
    drawn = 0
    for ax, key, ylabel in ((axes[0], speed_key, speed_label), (axes[1], primary, primary)):
        if key is None:
            continue
        points = []
        for s, row in zip(table.summaries, table.rows, strict=True):
            value = row.get(key)
            if s.drop_ratio is None or value is None:
                what = (
                    DROP_RATIO
                    if s.drop_ratio is None
                    else {"speedup": "speed-up", "clips_per_s": "clips/s"}.get(key, key)
                )
                plot.skipped.append(f"{label(s.run)}: no {what}")
                continue
            points.append((s.drop_ratio, value, s))
        shared = len({x for x, _, _ in points}) < len(points)  # runs that share a drop ratio need names
        for x, y, s in points:
            ax.scatter([x], [y], color=_color(table.summaries, s))
            if shared:
                ax.annotate(s.run.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
        if len({x for x, _, _ in points}) == len(points) > 1:  # one run per drop ratio: a curve
            xs, ys, _ = zip(*sorted(points, key=lambda p: p[0]), strict=True)
            ax.plot(xs, ys, color="0.6", zorder=0)
        ax.set_xlabel(DROP_RATIO)
        ax.set_ylabel(ylabel)
        drawn += len(points)
    plot.skipped = list(dict.fromkeys(plot.skipped))
    if not drawn:
        return plot
    return _save(fig, plot, out_dir)


def make_plots(table: Table, out_dir: str | Path) -> list[Plot]:
    """Every plot of the comparison, drawn ones written as ``out_dir/<name>.png`` (an older PNG of a plot
    not drawn this time is removed: it would show other runs)."""
    out = Path(out_dir)
    plots = [
        loss_curves(table, out, against_time=False),
        loss_curves(table, out, against_time=True),
        eval_curves(table, out),
        throughput_memory(table, out),
        drop_ratio_tradeoff(table, out),
    ]
    for p in plots:
        if p.path is None:
            (out / f"{p.name}.png").unlink(missing_ok=True)
    return plots
