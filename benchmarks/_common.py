"""Shared helpers for the benchmark scripts: best-of-k timing, glibc's allocator setting, a plain-text table."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
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


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (True), or do nothing where it is not glibc (False).

    By default glibc maps each large block afresh (above a threshold that adapts to the process's
    history) and hands freed memory back to the kernel, so every grid-sized temporary is first
    touched a page at a time. A baseline that allocates such temporaries at every evaluation (the
    L-BFGS-B objective in torch autograd) then runs at a speed set by the process's allocation
    history: 0.57–0.93 s per (256, 64) β = 0.1 solve in default processes, against 0.49–0.58 s
    with this setting, whose page faults fall from 0.45–0.87 to 0.10 million. With it the baseline
    gets its best showing, run after run (as with its thread count); our solver reuses its buffers
    and is unaffected. Process-wide and permanent: each benchmark runs in its own process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 64 MiB: above any grid of the (256, 64) benchmark; 1 GiB of free memory kept before trimming.
    return bool(mallopt(M_MMAP_THRESHOLD, 64 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def print_rows(title: str, rows: list[dict]) -> None:
    """Print rows of dicts as an aligned table under a title."""
    from spo_tabular.report import format_table
    print(title)
    print(format_table(rows))
    print()
