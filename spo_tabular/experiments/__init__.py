"""Named experiments on finite data, each a tidy DataFrame with provenance columns, and their runner.

EXPERIMENTS maps a name to (run, summarize); run_experiment executes one through the sweep runner
(inline, local processes, any Executor or a Dask cluster) and can write its CSV and summary JSON.
Columns of every DataFrame: docs/finite-data.md.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import _validation as v
from . import collapse, dataset_size, noise, regularization, scaling
from .sweep import (PROVENANCE, atomic_write_text, config_hash, derive_seeds, grid, json_ready,
                    package_version, run_sweep)


@dataclass(frozen=True)
class Experiment:
    """A named experiment: run(quick=..., **sweep options) -> DataFrame, summarize(DataFrame) -> dict."""

    name: str
    help: str
    run: Callable
    summarize: Callable


EXPERIMENTS = {m.NAME: Experiment(m.NAME, m.__doc__.splitlines()[0].split(": ", 1)[-1], m.run, m.summarize)
               for m in (scaling, noise, dataset_size, collapse, regularization)}


def run_experiment(name: str, *, quick: bool = False, out=None, n_seeds: int | None = None,
                   root_seed: int = 0, jobs: int = 1, executor=None, scheduler: str | None = None,
                   quiet: bool = False):
    """(DataFrame, summary dict) of the named experiment; with `out` (a folder) it resumes from
    out/NAME[-quick].jsonl and writes out/NAME[-quick].csv and NAME[-quick]-summary.json atomically."""
    v.choice("name", name, EXPERIMENTS)
    exp = EXPERIMENTS[name]
    sweep = dict(root_seed=root_seed, jobs=jobs, executor=executor, scheduler=scheduler, quiet=quiet)
    if n_seeds is not None:
        sweep["n_seeds"] = v.positive_int("n_seeds", n_seeds)
    stem = name + ("-quick" if quick else "")
    if out is not None:
        out = Path(out)
        sweep["journal"] = out / f"{stem}.jsonl"
    start = time.perf_counter()
    df = exp.run(quick=quick, **sweep)
    summary = json_ready({"experiment": name, "quick": quick, "rows": len(df),
                          "configs": int(df["config_hash"].nunique()), "seeds": int(df["seed_index"].nunique()),
                          "wall_time_s": time.perf_counter() - start, "package_version": package_version(),
                          **exp.summarize(df)})
    if out is not None:
        atomic_write_text(out / f"{stem}.csv", df.to_csv(index=False))
        atomic_write_text(out / f"{stem}-summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return df, summary


__all__ = ["EXPERIMENTS", "Experiment", "run_experiment", "run_sweep", "grid", "derive_seeds", "config_hash",
           "PROVENANCE"]
