"""Memory of sampled data: 10^8 pairs in under 3 GB, and no Python object per pair.

Each case runs in a fresh process on a (64, 64) Bradley–Terry problem: sample_pairs(problem, N),
then data.pair_mass() (the (m, n, n) counts the exact solver reads). Reported: the peak resident
memory of the process (and its peak before sampling: interpreter, numpy, torch), the bytes the
PairData arrays hold per pair, and how many objects the garbage collector tracks after the run
beyond those before it (a handful, whatever N: no per-pair objects). The baseline is what choix's API takes: a Python
list of (winner, loser) tuples, whose bytes per pair are measured the same way. Target: peak RSS
under 3 GB at N = 10^8.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys

from _common import print_rows

LIMIT_MIB = 3 * 1024


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_case(n_pairs: int, kind: str) -> dict:
    import numpy as np
    from spo_tabular import make_problem, sample_pairs
    problem = make_problem(64, 64, seed=0)
    gc.collect()
    before_mib, objects_before = _peak_mib(), len(gc.get_objects())
    data = sample_pairs(problem, n_pairs, seed=1)
    if kind == "ours":
        W = data.pair_mass()
        held = data.ctx.nbytes + data.chosen.nbytes + data.rejected.nbytes
        check = float(W.sum())          # Σ W = 1: the counts saw every pair
    else:   # choix's input: one tuple of two Python ints per comparison (per context: ctx 0 here)
        sel = data.ctx == 0
        pairs = list(zip(data.chosen[sel].tolist(), data.rejected[sel].tolist()))
        n_pairs = len(pairs)
        del data
        gc.collect()
        held = sys.getsizeof(pairs) + sum(sys.getsizeof(p) for p in pairs)   # small ints are cached
        check = float(np.isfinite(n_pairs))
    gc.collect()
    return {"data": "spo_tabular PairData" if kind == "ours" else "list of tuples (choix input)",
            "pairs": n_pairs, "bytes_per_pair": held / n_pairs,
            "new_gc_objects": len(gc.get_objects()) - objects_before,
            "peak_MiB_before": before_mib, "peak_MiB": _peak_mib(), "check": check}


def run(quick: bool) -> list[dict]:
    cases = ([(10**5, "ours"), (10**6, "ours"), (10**6, "list")] if quick else
             [(10**6, "ours"), (10**7, "ours"), (10**8, "ours"), (10**7, "list")])
    rows = []
    for n_pairs, kind in cases:
        out = subprocess.run([sys.executable, __file__, "--case", str(n_pairs), kind],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--case", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(one_case(int(args.case[0]), args.case[1])))
        return None
    rows = run(args.quick)
    ours = [r for r in rows if r["data"].startswith("spo")]
    theirs = [r for r in rows if not r["data"].startswith("spo")]
    largest = max(ours, key=lambda r: r["pairs"])
    # a handful of objects come and go with caches; per-pair objects would be N of them
    flat = max(abs(r["new_gc_objects"]) for r in ours) <= 100
    if args.json:
        print(json.dumps(rows, indent=2))
        return rows
    print_rows("sampled data in memory (fresh process per case; (64, 64) problem)",
               [{k: v for k, v in r.items() if k != "check"} for r in rows])
    print(f"peak RSS at N = {largest['pairs']:.0e}: {largest['peak_MiB']:.0f} MiB "
          f"({'PASS' if largest['peak_MiB'] < LIMIT_MIB else 'FAIL'}: limit {LIMIT_MIB} MiB)")
    print(f"Python objects left by the run: {sorted({r['new_gc_objects'] for r in ours})} for N = "
          f"{[r['pairs'] for r in ours]} ({'PASS: a few, whatever N' if flat else 'FAIL: grows with N'})")
    if theirs:
        print(f"ratio (bytes per pair, list of tuples / ours): "
              f"{theirs[0]['bytes_per_pair'] / largest['bytes_per_pair']:.1f}x")
    return rows


if __name__ == "__main__":
    main()
