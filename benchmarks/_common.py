"""Shared helpers for the benchmark scripts: best-of-k timing and a plain-text table."""
from __future__ import annotations

import gc
import time


def best_time(fn, repeat: int = 3):
    """Minimum wall time of `repeat` calls of fn() and the last result (min: the least-disturbed run).

    The garbage collector runs before each call, outside the timing: a contender that leaves cyclic
    garbage behind (autograd graphs, optimiser state) would otherwise slow whatever is timed next
    (measured: our 6 ms solve took 10–15 ms after an L-BFGS-B run until a collection).
    """
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def print_rows(title: str, rows: list[dict]) -> None:
    """Print rows of dicts as an aligned table under a title."""
    from spo_tabular.report import format_table
    print(title)
    print(format_table(rows))
    print()
