"""Sweep runner: grids × seeds → one DataFrame; resumable journal; processes, executors and Dask."""
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sweep_tasks
from spo_tabular import __version__
from spo_tabular._progress import QUIET_ENV, progress_disabled
from spo_tabular.experiments.sweep import (PROVENANCE, Journal, atomic_write_text, config_hash, derive_seeds,
                                           grid, run_sweep)

ROOT = Path(__file__).resolve().parents[1]


def _results(df):
    return df.drop(columns=["wall_time_s"]).reset_index(drop=True)


def test_grid_is_the_cartesian_product_in_order():
    assert grid(a=[1, 2], b=["x", "y"]) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                            {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(TypeError, match="axis a"):
        grid(a=3)


def test_seeds_come_from_seed_sequence_spawn():
    seeds = derive_seeds(7, 4)
    expected = [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
                for c in np.random.SeedSequence(7).spawn(4)]
    assert seeds == expected and len(set(seeds)) == 4
    assert derive_seeds(7, 2) == seeds[:2]          # adding seeds keeps the earlier ones
    assert all(0 <= s < 2**63 for s in seeds)


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": 2.0}, "e") == config_hash({"b": 2.0, "a": 1}, "e")
    assert config_hash({"a": np.int64(1)}, "e") == config_hash({"a": 1}, "e")
    assert config_hash({"a": 1}, "e") != config_hash({"a": 1}, "f")
    assert len(config_hash({"a": 1})) == 12


def test_inline_sweep_rows_and_provenance():
    df = run_sweep(sweep_tasks.square, grid(x=[1, 2, 3]), n_seeds=2, root_seed=5, experiment="t", quiet=True)
    assert len(df) == 6
    assert list(df.columns[-len(PROVENANCE):]) == list(PROVENANCE)
    assert df["x"].tolist() == [1, 1, 2, 2, 3, 3] and df["seed_index"].tolist() == [0, 1] * 3
    assert df["value"].tolist() == [1, 1, 4, 4, 9, 9]
    seeds = derive_seeds(5, 2)
    assert df["seed"].tolist() == seeds * 3          # common random numbers across configurations
    assert (df["package_version"] == __version__).all() and (df["experiment"] == "t").all()
    assert df["config_hash"].nunique() == 3 and (df["wall_time_s"] >= 0).all()


def test_task_may_return_several_rows():
    df = run_sweep(sweep_tasks.two_rows, grid(x=[1, 2]), quiet=True)
    assert df[["x", "part", "value"]].values.tolist() == [[1, 0, 1], [1, 1, -1], [2, 0, 2], [2, 1, -2]]


def test_rerun_skips_finished_rows(tmp_path):
    journal = tmp_path / "j.jsonl"
    first = run_sweep(sweep_tasks.square, grid(x=[1, 2]), n_seeds=2, journal=journal, quiet=True)
    # Every task is in the journal: a rerun with a task that would fail must not call it.
    again = run_sweep(sweep_tasks.boom, grid(x=[1, 2]), n_seeds=2, journal=journal, quiet=True)
    pd.testing.assert_frame_equal(first, again)
    # Growing the grid computes only the new configuration.
    more = run_sweep(sweep_tasks.square, grid(x=[1, 2, 3]), n_seeds=2, journal=journal, quiet=True)
    assert len(more) == 6 and len(journal.read_text().splitlines()) == 6


def test_torn_last_line_is_cut_and_recomputed(tmp_path):
    journal = tmp_path / "j.jsonl"
    run_sweep(sweep_tasks.square, grid(x=[1, 2]), journal=journal, quiet=True)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])       # a kill mid-write
    df = run_sweep(sweep_tasks.square, grid(x=[1, 2]), journal=journal, quiet=True)
    assert df["x"].tolist() == [1, 2]
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 2


def test_corrupt_middle_line_is_an_error(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1"):
        run_sweep(sweep_tasks.square, grid(x=[1]), journal=journal, quiet=True)


def test_a_failed_task_keeps_the_finished_ones(tmp_path):
    journal = tmp_path / "j.jsonl"
    with pytest.raises(RuntimeError, match="on purpose"):
        run_sweep(sweep_tasks.boom, grid(x=[1, 2, 3]), journal=journal, quiet=True)
    assert len(journal.read_text().splitlines()) == 1          # x = 1 finished before x = 2 failed


def test_one_journal_one_writer(tmp_path):
    journal = tmp_path / "j.jsonl"
    with Journal(journal):
        with pytest.raises(RuntimeError, match="in use"):
            run_sweep(sweep_tasks.square, grid(x=[1]), journal=journal, quiet=True)


@pytest.mark.slow
def test_sigkill_mid_sweep_then_restart_gives_every_row_exactly_once(tmp_path):
    journal, out = tmp_path / "j.jsonl", tmp_path / "out.json"
    script = (
        "import sys\n"
        "import sweep_tasks\n"
        "from spo_tabular.experiments.sweep import grid, run_sweep\n"
        "df = run_sweep(sweep_tasks.slow, grid(x=list(range(15)), payload=[200000]), n_seeds=2,\n"
        "               journal=sys.argv[1], quiet=True)\n"
        "df.to_json(sys.argv[2], orient='records')\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    cmd = [sys.executable, "-c", script, str(journal), str(out)]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    finished_before = journal.read_bytes().count(b"\n")
    assert 5 <= finished_before < 30
    assert not out.exists()

    subprocess.run(cmd, env=env, check=True, timeout=300)
    rows = pd.read_json(out, orient="records")
    assert len(rows) == 30
    assert sorted(zip(rows["x"], rows["seed_index"])) == [(x, s) for x in range(15) for s in range(2)]
    assert rows["pid"].nunique() == 2                     # the restart kept the first run's rows
    assert (rows["pid"] == rows["pid"].iloc[0]).sum() >= finished_before
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 30              # and the journal holds each task once


def test_local_processes_match_inline():
    configs = grid(x=[1, 2, 3])
    inline = run_sweep(sweep_tasks.square, configs, n_seeds=2, quiet=True)
    procs = run_sweep(sweep_tasks.square, configs, n_seeds=2, jobs=2, quiet=True)
    pd.testing.assert_frame_equal(_results(inline), _results(procs))


def test_any_executor():
    configs = grid(x=[1, 2, 3])
    inline = run_sweep(sweep_tasks.square, configs, n_seeds=2, quiet=True)
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        threaded = run_sweep(sweep_tasks.square, configs, n_seeds=2, executor=pool, quiet=True)
    pd.testing.assert_frame_equal(_results(inline), _results(threaded))


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    from spo_tabular.experiments import scaling
    configs = scaling.configs(scaling.QUICK)[:2]
    inline = run_sweep(scaling.task, configs, n_seeds=2, experiment="scaling", quiet=True)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:   # any free port (xdist runs two at once)
        by_address = run_sweep(scaling.task, configs, n_seeds=2, experiment="scaling",
                               scheduler=cluster.scheduler_address, journal=tmp_path / "d.jsonl", quiet=True)
        with distributed.Client(cluster) as client:
            by_executor = run_sweep(scaling.task, configs, n_seeds=2, experiment="scaling",
                                    executor=client.get_executor(), quiet=True)
    pd.testing.assert_frame_equal(_results(inline), _results(by_address), check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(_results(inline), _results(by_executor), check_exact=False, rtol=1e-12)


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_progress_is_quiet_off_a_terminal_or_when_asked(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.delenv(QUIET_ENV, raising=False)
    monkeypatch.setattr(sys, "stdout", Tty())
    assert progress_disabled() is False
    assert progress_disabled(quiet=True) is True
    monkeypatch.setenv(QUIET_ENV, "1")
    assert progress_disabled() is True
    monkeypatch.setenv(QUIET_ENV, "0")
    assert progress_disabled() is False
    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))
    assert progress_disabled() is True


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(fn=3), TypeError, "fn must be callable"),
    (dict(configs=[]), ValueError, "non-empty list of dicts"),
    (dict(configs=[1]), ValueError, "non-empty list of dicts"),
    (dict(configs=[{"seed": 1}]), ValueError, "clash with the provenance"),
    (dict(configs=[{"x": 1}, {"x": 1}]), ValueError, "distinct"),
    (dict(jobs=0), ValueError, "jobs"),
    (dict(n_seeds=0), ValueError, "n_seeds"),
    (dict(root_seed=-1), ValueError, "root_seed"),
    (dict(executor="pool"), TypeError, "executor"),
    (dict(scheduler="localhost"), ValueError, "scheduler"),
    (dict(fn=sweep_tasks.bad_return), TypeError, "must return a dict"),
])
def test_bad_inputs(kwargs, exc, match):
    args = dict(fn=sweep_tasks.square, configs=[{"x": 1}], quiet=True)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        run_sweep(args.pop("fn"), args.pop("configs"), **args)
