"""Measuring, apart from predicting (``turbo_ds.plan``): how runs are launched for measurement and
benchmarks (``launch``)."""
