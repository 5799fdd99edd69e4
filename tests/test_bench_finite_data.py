"""The finite-data benchmark scripts run end to end on their --quick sizes (so they cannot rot)."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:       # as when the script runs: its folder (and _common.py) on the path
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_batched_quick(capsys):
    row = _load("bench_batched").main(["--quick", "--json"])
    assert row["configs"] == 4 and row["max_tv_between"] < 1e-9 and row["same_status"]
    assert row["separate_s"] > 0 and row["batched_s"] > 0


def test_bench_sgd_quick(capsys):
    row = _load("bench_sgd").main(["--quick", "--json"])
    assert row["full_batch_s"] < float("inf")            # solve_sgd reached the threshold
    assert row["threshold"] == pytest.approx(1.1 * row["exact_distance"])
