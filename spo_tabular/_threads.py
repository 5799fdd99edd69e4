"""Temporarily limit torch's intra-op threads.

Steps on a small logits table are a few microseconds of arithmetic each; with several threads every
op pays a thread-pool hand-off that, on a busy machine, costs milliseconds (measured: 10-20× slower
on 2 shared cores). Small workloads therefore run single-threaded.
"""
from __future__ import annotations

from contextlib import contextmanager

SMALL_WORK = 1 << 16   # elements per step below which one thread is faster


@contextmanager
def torch_threads(n: int | None):
    """Run the block with torch.set_num_threads(n), restoring the previous value; None changes nothing."""
    import torch
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
