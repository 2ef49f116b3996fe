"""Compare turbo_ds runs logged to MLflow: speed-up, memory saved and quality against a baseline run.

``scripts/compare.py`` is the entry point; :func:`turbo_ds.compare.main.compare` the one call behind it.
``runs`` loads runs from one or several stores, ``summary`` reduces a run to the numbers compared,
``table`` builds the table (text and CSV), ``plots`` the PNGs, ``report`` the self-contained HTML page;
``time_to_quality`` reads a benchmark's run folders for the training time to a quality target
(``scripts/bench_vlp.py``). Nothing here imports torch or deepspeed: MLflow and matplotlib are enough,
so it runs on a laptop (a run without a ``turbo_ds.headline`` tag asks its task, with torch if present).
"""

from turbo_ds.compare.runs import CompareError

__all__ = ["CompareError"]
