"""Every benchmark script runs end to end on tiny sizes, so that none of them can rot."""
import pathlib
import subprocess
import sys

import pytest

BENCH = sorted(p for p in (pathlib.Path(__file__).parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCH, ids=[p.stem for p in BENCH])
def test_benchmark_quick_run(script):
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio" in proc.stdout.lower(), proc.stdout[-2000:]
