"""``scripts/compare.py`` (docs/compare.md): select runs, print the table, write compare.csv, the plots
and report.html.

python scripts/compare.py --experiment demo --out runs/compare                      # stores under runs/
python scripts/compare.py --runs-dir runs/sweep_drop --baseline drop0 --out runs/compare
python scripts/compare.py --tracking-uri sqlite:///a/mlflow.db --tracking-uri sqlite:///b/mlflow.db \\
    --experiment turbo_ds --filter "params.\\"pmae.enabled\\" = 'True'" --out runs/compare
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from turbo_ds.compare.plots import Plot, make_plots
from turbo_ds.compare.report import write_html
from turbo_ds.compare.runs import load_runs, resolve_stores
from turbo_ds.compare.summary import summarize
from turbo_ds.compare.table import Table, build_table, choose_baseline, format_text, write_csv


@dataclass
class Comparison:
    table: Table
    plots: list[Plot]
    stores: list[str]
    text: str  # the printed table and its notes
    paths: list[Path]  # everything written, report.html first


def compare(
    out_dir: str | Path,
    experiments: Sequence[str] = (),
    runs: Sequence[str] = (),
    filter_string: str = "",
    baseline: str | None = None,
    tracking_uris: Sequence[str] = (),
    runs_dirs: Sequence[str | Path] = (),
    env: Mapping[str, str] = os.environ,
) -> Comparison:
    """Compare the selected runs and write ``out_dir/{report.html, compare.csv, *.png}``; e.g. every run
    of a sweep folder: ``compare(out, runs_dirs=[sweep_dir])``. Selection errors raise CompareError."""
    stores = resolve_stores(tracking_uris, runs_dirs, env)
    summaries = [summarize(r) for r in load_runs(stores, experiments, runs, filter_string)]
    base, note = choose_baseline(summaries, baseline)
    table = build_table(summaries, base, note)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(table, out)
    names = ", ".join(dict.fromkeys(s.run.experiment for s in summaries))
    created = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"turbo_ds compare: {names} ({created})"
    report = write_html(table, plots, out / "report.html", title, stores, created)
    csv_path = write_csv(table, out / "compare.csv")
    paths = [report, csv_path] + [p.path for p in plots if p.path is not None]
    return Comparison(table, plots, stores, format_text(table), paths)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare turbo_ds runs in MLflow: speed-up, memory ratio and quality against a baseline.",
    )
    p.add_argument("--experiment", action="append", default=[], metavar="NAME", help="repeatable; none = all")
    p.add_argument(
        "--runs", nargs="+", action="extend", default=[], metavar="ID_OR_NAME", help="keep only these runs"
    )
    p.add_argument("--filter", default="", metavar="FILTER", help="an MLflow search_runs filter string")
    p.add_argument(
        "--baseline", metavar="ID_OR_NAME", help="default: the run with token_dropout.drop_ratio 0"
    )
    p.add_argument(
        "--tracking-uri", action="append", default=[], metavar="URI", help="repeatable: the stores are merged"
    )
    p.add_argument(
        "--runs-dir", action="append", default=[], metavar="DIR", help="repeatable: every mlflow.db under DIR"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="report.html, compare.csv and the PNGs")
    p.add_argument("--debug", action="store_true", help="tracebacks for errors")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> Comparison:
    args = parse_args(argv)
    result = compare(
        args.out,
        experiments=args.experiment,
        runs=args.runs,
        filter_string=args.filter,
        baseline=args.baseline,
        tracking_uris=args.tracking_uri,
        runs_dirs=args.runs_dir,
    )
    print(result.text)
    print("\nwrote:")
    for path in result.paths:
        print(f"  {path}")
    return result
