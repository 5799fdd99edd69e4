"""Scaling of the exact population solver with (n_contexts, n_actions), each size in a fresh process.

For every size: wall time (best warm repeat, and the cold first solve), Newton iterations, peak
resident memory; then the least-squares exponents a, b of time ≈ C · n_contexts^a · n_actions^b.
Per iteration the work is a few passes over the (m, n, n) pair grid (O(m n²)) plus m Cholesky
factorisations (O(m n³)), so a ≈ 1 and b between 2 and 3 are expected.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from _common import print_rows


def one_case(m: int, n: int, beta: float) -> dict:
    """Cold time (the first solve in a fresh process: pool start, first touch of buffers), then the
    best of up to 3 warm repeats where a solve takes under 2 s (the exponents are fitted on those)."""
    from spo_tabular import make_problem, solve_exact
    problem = make_problem(m, n, seed=0, ref="dirichlet" if beta else "uniform")
    solve_exact(make_problem(2, 4, seed=0), alpha=0.7)       # warm torch up on a tiny problem
    t0 = time.perf_counter()
    res = solve_exact(problem, alpha=0.7, beta=beta)
    cold = time.perf_counter() - t0
    warm = [cold]
    for _ in range(3 if cold < 2.0 else 0):
        t0 = time.perf_counter()
        solve_exact(problem, alpha=0.7, beta=beta)
        warm.append(time.perf_counter() - t0)
    return {"n_contexts": m, "n_actions": n, "beta": beta, "seconds": min(warm), "cold_seconds": cold,
            "newton_iter": res.n_iter, "converged": res.converged,
            "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(quick: bool) -> list[dict]:
    sizes = ([(16, 16), (32, 16), (16, 32)] if quick else
             [(16, 16), (64, 16), (256, 16), (1024, 16), (16, 64), (16, 256), (64, 64), (256, 64),
              (256, 128), (1024, 64), (256, 256), (1024, 256)])
    rows = []
    for beta in (0.0, 0.1):
        for m, n in sizes:
            out = subprocess.run([sys.executable, __file__, "--case", str(m), str(n), str(beta)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def fit_exponents(rows: list[dict]) -> dict:
    """Least squares log t = log C + a log m + b log n, per beta."""
    out = {}
    for beta in sorted({r["beta"] for r in rows}):
        sel = [r for r in rows if r["beta"] == beta and r["seconds"] > 0]
        X = np.column_stack([np.ones(len(sel)), np.log([r["n_contexts"] for r in sel]),
                             np.log([r["n_actions"] for r in sel])])
        coef, *_ = np.linalg.lstsq(X, np.log([r["seconds"] for r in sel]), rcond=None)
        out[f"beta={beta:g}"] = {"exponent_n_contexts": float(coef[1]), "exponent_n_actions": float(coef[2])}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--case", nargs=3, metavar=("M", "N", "BETA"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        m, n, beta = int(args.case[0]), int(args.case[1]), float(args.case[2])
        print(json.dumps(one_case(m, n, beta)))
        return None
    rows = run(args.quick)
    fits = fit_exponents(rows)
    if args.json:
        print(json.dumps({"rows": rows, "fits": fits}, indent=2))
    else:
        print_rows("exact population solver: scaling (fresh process per size)", rows)
        for k, v in fits.items():
            print(f"fitted time exponents ({k}): n_contexts^{v['exponent_n_contexts']:.2f} "
                  f"n_actions^{v['exponent_n_actions']:.2f}")
        print("(ratio: not applicable — a scaling table)")
    return rows, fits


if __name__ == "__main__":
    main()
