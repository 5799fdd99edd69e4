"""Every benchmark script runs end to end on tiny sizes, so that none of them can rot."""
import pathlib
import platform
import subprocess
import sys

import pytest

BENCH = sorted(p for p in (pathlib.Path(__file__).parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCH, ids=[p.stem for p in BENCH])
def test_benchmark_quick_run(script):
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio" in proc.stdout.lower(), proc.stdout[-2000:]


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

_FAULTS = """
import resource, sys
sys.path.insert(0, {bench!r})
if sys.argv[1] == "keep":
    from _common import keep_freed_memory
    assert keep_freed_memory()
from bench_exact import lbfgs_baseline
from spo_tabular import make_problem
p = make_problem(64, 64, seed=0, ref="dirichlet")
lbfgs_baseline(p, alpha=0.7, beta=0.1, threads=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
lbfgs_baseline(p, alpha=0.7, beta=0.1, threads=1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_spares_the_baseline_its_page_faults():
    # bench_exact's L-BFGS-B makes grid-sized autograd temporaries at every evaluation; by default
    # glibc hands them back to the kernel and the next ones fault in afresh (measured: 24,000 minor
    # faults for a second (64, 64) solve); keep_freed_memory makes glibc reuse them (~500).
    code = _FAULTS.format(bench=str(BENCH[0].parent))
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True, timeout=300).stdout) for mode in ("default", "keep")}
    assert faults["default"] > 5000
    assert faults["keep"] < faults["default"] / 10


def test_paired_rounds_times_the_other_solves_in_every_round(monkeypatch):
    # bench_exact's limit line (perfect scaling of the one-thread work) and its executor line need
    # those solves timed in the same rounds as both sides, under the same conditions: ours, then
    # each of the others, then the baseline, each best of `repeat`.
    import time
    monkeypatch.syspath_prepend(str(BENCH[0].parent))
    from bench_exact import paired_rounds
    calls = []
    out = paired_rounds(lambda: calls.append("ours"), lambda: calls.append("base"), 3, 2,
                        others={"serial": lambda: (calls.append("serial"), time.sleep(0.003))[1],
                                "pool": lambda: calls.append("pool") or 7})
    assert calls == ["ours", "ours", "serial", "serial", "pool", "pool", "base", "base"] * 3
    assert len(out) == 6 and set(out[5]) == {"serial", "pool"}
    times, last = out[5]["serial"]
    assert times.shape == (3,) and (times >= 0.003).all() and (out[0] < 0.003).all()
    assert out[5]["pool"][1] == 7
    assert len(paired_rounds(lambda: 1, lambda: 2, 1, 1)) == 5
