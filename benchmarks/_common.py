"""Shared helpers for the benchmark scripts: best-of-k timing and a plain-text table."""
from __future__ import annotations

import gc
import time


def best_time(fn, repeat: int = 3):
    """Minimum wall time of `repeat` calls of fn() and the last result (min: the least-disturbed run).

    The garbage collector runs once before the calls, outside the timing: a contender that leaves
    cyclic garbage behind (autograd graphs, optimiser state) would otherwise slow whatever is timed
    next (measured: our 6 ms solve took 10–15 ms after an L-BFGS-B run until a collection). Not
    before every call: a collection walks every Python object and leaves the caches cold (a 2 ms
    solve took 3.5 ms right after one).
    """
    best, out = float("inf"), None
    gc.collect()
    for _ in range(max(1, repeat)):
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
