"""The planner against measured peaks on configs it was not tuned on: real trainer steps (task, data,
DeepSpeed engine, ds_config) on 1 or 2 local CPU ranks, each measured by
``turbo_ds.measure.run`` (profiler memory events from an empty start; the steps' peak), beside
the planner's prediction for the same config. A benchmark, not a test. The cases (fixed ones and
``--random`` ones drawn with ``--seed``) live in ``turbo_ds.measure.bench_plan``.

    python scripts/bench_plan.py --json docs/bench_plan.json          # make bench-plan
    python scripts/bench_plan.py --only 7 12 --random 24              # some rows again
"""

from __future__ import annotations

import argparse

from turbo_ds.measure.bench_plan import FIXED_CASES, markdown_table, random_cases, run_bench, summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the rows and the summary here")
    ap.add_argument("--random", type=int, default=24, help="random configs after the fixed ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2, help="trainer steps measured per config")
    ap.add_argument("--repeats", type=int, default=3, help="measurements of each config")
    ap.add_argument("--only", nargs="*", default=None, help="row indices")
    args = ap.parse_args(argv)
    only = None if args.only is None else {int(i) for i in args.only}
    cases = FIXED_CASES + random_cases(args.random, args.seed)
    result = run_bench(cases, args.json, args.steps, args.repeats, only, seed=args.seed)
    rows = result["rows"]
    s = summary(rows)
    print("\n" + markdown_table(rows))
    print(
        f"\n|error| over {len(rows)} configs: worst {s['worst_abs_error_vs_lower_pct']:.1f}%, median "
        f"{s['median_abs_error_vs_lower_pct']:.1f}% against the lowest run; worst {s['worst_abs_error_pct']:.1f}%, "
        f"median {s['median_abs_error_pct']:.1f}% against the highest (target: worst within 10%)"
    )
    return result


if __name__ == "__main__":
    main()
