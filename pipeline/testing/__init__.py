"""Tiny random-weight models and a toy dataset, built from configs (nothing is downloaded): what the
demo, the benchmarks and the tests share."""
