"""Helpers of benchmarks/bench_training.py: data preparation, lorem-jax runs, reports."""
