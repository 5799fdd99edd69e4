"""Sweep runner: a grid of configurations × seeds → one tidy DataFrame with provenance columns.

Each task is fn(config, seed) -> a row dict, a list of them or a DataFrame. Seeds come from
np.random.SeedSequence(root_seed).spawn(n_seeds): seed index k is the same for every configuration
(common random numbers, so methods are compared on the same data). Tasks run inline, on local
processes (`jobs`), on any concurrent.futures.Executor, or on a Dask cluster (`scheduler`).
With a `journal` file every finished task is appended as one JSON line by a single O_APPEND
write; a rerun skips the tasks already there, and a torn last line (a kill mid-write) is cut off
before appending, so a sweep killed at any instant and restarted holds every row exactly once.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import _validation as v
from .._progress import QUIET_ENV, progress
from .._threads import torch_threads

PROVENANCE = ("experiment", "config_hash", "seed_index", "seed", "package_version", "wall_time_s")


def package_version() -> str:
    """The installed spo_tabular version (provenance column)."""
    from .. import __version__
    return __version__


def _plain(value):
    """JSON-ready Python scalars and lists from numpy values (NaN stays NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(x) for x in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def config_hash(config: dict, experiment: str = "") -> str:
    """12 hex digits of SHA-256 over the experiment name and the canonical JSON of the configuration."""
    text = json.dumps({"experiment": experiment, "config": _plain(config)}, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def grid(**axes) -> list[dict]:
    """Cartesian product of the named axes, in order: grid(a=[1, 2], b=["x"]) -> [{a: 1, b: "x"}, {a: 2, b: "x"}]."""
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"grid axis {name} must be a list of values, got {type(values).__name__}")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[k]) for k in names))]


def derive_seeds(root_seed: int, n_seeds: int) -> list[int]:
    """n_seeds independent 63-bit seeds: SeedSequence(root_seed).spawn(n_seeds), one integer each."""
    root_seed = v.positive_int("root_seed", root_seed, minimum=0)
    n_seeds = v.positive_int("n_seeds", n_seeds)
    return [int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
            for child in np.random.SeedSequence(root_seed).spawn(n_seeds)]


@dataclass(frozen=True)
class Task:
    """One (configuration, seed) unit of work."""

    config: dict
    config_hash: str
    seed_index: int
    seed: int

    @property
    def key(self) -> str:
        """"<config_hash>:<seed_index>", the task's identity in the journal."""
        return f"{self.config_hash}:{self.seed_index}"


def _run_task(fn, task: Task, experiment: str, version: str, threads: int | None) -> tuple[str, list[dict]]:
    """Run fn(config, seed) and attach the provenance columns to each of its rows (executes on a worker)."""
    start = time.perf_counter()
    with torch_threads(threads):
        out = fn(dict(task.config), task.seed)
    wall = time.perf_counter() - start
    if isinstance(out, pd.DataFrame):
        rows = out.to_dict(orient="records")
    elif isinstance(out, dict):
        rows = [out]
    elif isinstance(out, list) and all(isinstance(r, dict) for r in out):
        rows = out
    else:
        raise TypeError(f"sweep task must return a dict, a list of dicts or a DataFrame, got {type(out).__name__}")
    prov = {"experiment": experiment, "config_hash": task.config_hash, "seed_index": task.seed_index,
            "seed": task.seed, "package_version": version, "wall_time_s": wall}
    return task.key, [_plain({**task.config, **row, **prov}) for row in rows]


# --------------------------------------------------------------------------- journal

class Journal:
    """Append-only JSON-lines file of finished tasks: {"key": ..., "rows": [...]} per line."""

    def __init__(self, path):
        """Open nothing yet; `with Journal(path):` takes the file and its lock."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = None

    def __enter__(self):
        import fcntl
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # one writer; released by the kernel on kill
        except BlockingIOError:
            os.close(self._fd)
            raise RuntimeError(f"journal {self.path} is in use by another running sweep") from None
        return self

    def __exit__(self, *exc):
        os.close(self._fd)
        self._fd = None

    def load(self) -> dict[str, list[dict]]:
        """Finished tasks by key (first occurrence wins); cuts off a torn last line left by a kill."""
        data = self.path.read_bytes() if self.path.exists() else b""
        end = data.rfind(b"\n") + 1
        if end < len(data):                              # a partial last line: the writer died mid-write
            os.truncate(self.path, end)
            data = data[:end]
        done: dict[str, list[dict]] = {}
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, rows = record["key"], record["rows"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"journal {self.path} line {number} is not a sweep record: {exc}") from None
            done.setdefault(key, rows)
        return done

    def append(self, key: str, rows: list[dict]) -> None:
        """One line, one write(2) on an O_APPEND descriptor: whole, or torn only at the end (cut by load)."""
        line = (json.dumps({"key": key, "rows": rows}, allow_nan=True) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view):]


# --------------------------------------------------------------------------- runner

def _worker_init():
    """Process-pool workers: one torch thread each (the pool supplies the parallelism), no bars."""
    os.environ[QUIET_ENV] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)


def _dask_executor(scheduler: str):
    try:
        from dask.distributed import Client
    except ImportError as exc:   # pragma: no cover - the extra is installed in CI
        raise ImportError("scheduler= needs dask.distributed: pip install 'spo_tabular[distributed]'") from exc
    client = Client(scheduler)
    return client, client.get_executor()


def run_sweep(fn, configs, *, n_seeds: int = 1, root_seed: int = 0, experiment: str = "",
              journal=None, jobs: int = 1, executor: cf.Executor | None = None, scheduler: str | None = None,
              quiet: bool = False, threads: int | None = 1) -> pd.DataFrame:
    """fn(config, seed) for every config × seed → DataFrame of config, result and PROVENANCE columns.

    Rows come in task order (config, then seed index) whatever order they finished in. `journal`:
    a .jsonl path making the sweep resumable. Runs on `executor` if given, else on a Dask cluster
    at `scheduler` ("tcp://host:port"), else on `jobs` local processes (inline when jobs == 1).
    `threads`: torch intra-op threads for inline tasks (None: leave as is; local worker processes
    use one, other executors are left alone). fn must be importable
    (a module-level function) for processes and Dask.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    configs = list(configs)
    if not configs or not all(isinstance(c, dict) for c in configs):
        raise ValueError("configs must be a non-empty list of dicts")
    reserved = sorted(set(PROVENANCE) & set().union(*configs))
    if reserved:
        raise ValueError(f"config keys {reserved} clash with the provenance columns {list(PROVENANCE)}")
    jobs = v.positive_int("jobs", jobs)
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
    if scheduler is not None and (not isinstance(scheduler, str) or "://" not in scheduler):
        raise ValueError(f"scheduler must be an address like 'tcp://host:8786', got {scheduler!r}")
    seeds = derive_seeds(root_seed, n_seeds)
    tasks = []
    for config in configs:
        h = config_hash(config, experiment)
        tasks.extend(Task(config, h, k, s) for k, s in enumerate(seeds))
    if len({t.key for t in tasks}) != len(tasks):
        raise ValueError("configs must be distinct (two configurations have the same hash)")

    version = package_version()
    store = Journal(journal) if journal is not None else None
    results: dict[str, list[dict]] = {}
    with (store if store is not None else contextlib.nullcontext()):
        if store is not None:
            wanted = {t.key for t in tasks}
            results = {k: rows for k, rows in store.load().items() if k in wanted}
        pending = [t for t in tasks if t.key not in results]

        def finish(key, rows):
            if store is not None:
                store.append(key, rows)
            results[key] = rows
            bar.update(1)

        with progress(len(pending), experiment or "sweep", quiet) as bar:
            if pending and executor is None and scheduler is None and jobs == 1:
                for t in pending:
                    finish(*_run_task(fn, t, experiment, version, threads))
            elif pending:
                client = None
                if executor is not None:
                    pool, owned = executor, False
                elif scheduler is not None:
                    client, pool = _dask_executor(scheduler)
                    owned = True
                else:
                    import multiprocessing
                    pool = cf.ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init,
                                                  mp_context=multiprocessing.get_context("spawn"))
                    owned = True
                try:
                    # Threads are a process-wide setting: our own pool sets them per worker, and tasks
                    # on someone else's executor (possibly threads of one process) leave them alone.
                    futures = [pool.submit(_run_task, fn, t, experiment, version, None) for t in pending]
                    try:
                        for fut in cf.as_completed(futures):
                            finish(*fut.result())
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
                finally:
                    if client is not None:
                        client.close()
                    elif owned:
                        pool.shutdown(wait=True, cancel_futures=True)
    rows = [row for t in tasks for row in results[t.key]]
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows → DataFrame with the provenance columns last."""
    df = pd.DataFrame(rows)
    front = [c for c in df.columns if c not in PROVENANCE]
    return df[front + [c for c in PROVENANCE if c in df.columns]]


def atomic_write_text(path, text: str) -> None:
    """Write text to path via a temporary file in the same folder and os.replace (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def json_ready(value):
    """Summaries → JSON: numpy scalars to Python, NaN/inf to None (strict JSON)."""
    value = _plain(value)
    if isinstance(value, dict):
        return {k: json_ready(x) for k, x in value.items()}
    if isinstance(value, list):
        return [json_ready(x) for x in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
