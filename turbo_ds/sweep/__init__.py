"""Sweeps: every combination of a grid of config values, one run folder and one MLflow run each, in one
MLflow experiment (``scripts/sweep.py``; see docs/training.md, "Sweeps").

- ``grid``: ``--grid key=v1,v2`` -> combinations and their folder names;
- ``plan``: the sweep's name, id, store, and each run's overrides and command, validated up front;
- ``launch``: a run as a child process, and the sweep's signals passed on to its ranks;
- ``run``: the loop, ``sweep.json`` and the summary.
"""
