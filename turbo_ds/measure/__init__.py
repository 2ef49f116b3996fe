"""Measuring, apart from predicting (``turbo_ds.plan``): peak memory (``memory``), the model core's one
training step (``core_step``) and its fresh-process probe (``probe``), real trainer runs (``run``), an
alignment evaluation (``align``), the planner and model benchmarks (``bench_plan``, ``bench_model``),
how runs are launched for measurement and benchmarks (``launch``), what a frame-exact CPU decode costs
(``decode_work``) and NVDEC on a lent GPU (``nvdec``)."""
