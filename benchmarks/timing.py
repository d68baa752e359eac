"""Shared timing for the operator benchmarks (run as `python benchmarks/NAME.py`, so this
folder is on the import path)."""

import time


def best_seconds(function, rounds: int) -> float:
    """The minimum wall time of `rounds` calls of function(), after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def best_ms(function, rounds: int) -> float:
    return 1e3 * best_seconds(function, rounds)
