"""Measuring, apart from predicting (``turbo_ds.plan``): peak memory (``memory``), the model core's one
training step (``core_step``) and its fresh-process probe (``probe``), real trainer runs (``run``), an
alignment evaluation (``align``), the planner and model benchmarks (``bench_plan``, ``bench_model``),
and how runs are launched for measurement and benchmarks (``launch``)."""
