"""Progress bars (tqdm) shared by the sweep runner and the SGD solver.

Off when the caller asks (`quiet=True`, the CLI's `--quiet`), when SPO_TABULAR_QUIET is set to a
non-empty value other than 0, or when stdout is not a terminal (logs, pipes, CI, tests).
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

QUIET_ENV = "SPO_TABULAR_QUIET"


def progress_disabled(quiet: bool = False) -> bool:
    """True when no progress bar should be drawn (explicit quiet, the environment variable, or no terminal)."""
    if quiet:
        return True
    if os.environ.get(QUIET_ENV, "").strip() not in ("", "0"):
        return True
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):   # replaced or closed stdout
        return True


def progress(total: int, desc: str, quiet: bool = False):
    """A tqdm bar of `total` units (disabled per progress_disabled); use as a context manager."""
    return tqdm(total=total, desc=desc, disable=progress_disabled(quiet), leave=False,
                dynamic_ncols=True, mininterval=0.2)
