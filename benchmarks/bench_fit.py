"""Fitting sampled data: solve_exact(data=..., alpha=1, beta=0) vs choix.ilsr_pairwise (BT maximum likelihood).

With α = 1, β = 0 the exact SPO minimiser is softmax(θ̂), θ̂ the Bradley–Terry MLE, which is what
choix estimates. Prints both times, the ratio (target >= 50x) and the max TV between the policies
(target <= 1e-8). Cases: one context × 64 actions × 200,000 comparisons; 64 contexts at once. Each
side's time is the best of 3 calls.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.special import softmax

from _common import best_time, print_rows
from spo_tabular import make_problem, sample_pairs, solve_exact


def choix_fit(data, m, n):
    import choix
    out = np.empty((m, n))
    for x in range(m):
        sel = data.ctx == x
        pairs = list(zip(data.chosen[sel].tolist(), data.rejected[sel].tolist()))
        out[x] = choix.ilsr_pairwise(n, pairs, tol=1e-12, max_iter=1000)
    return softmax(out, axis=1)


def run(quick: bool):
    rows = []
    cases = [(1, 16, 5_000), (4, 16, 20_000)] if quick else [(1, 64, 200_000), (64, 64, 200_000)]
    for m, n, N in cases:
        problem = make_problem(m, n, seed=0)
        data = sample_pairs(problem, N, seed=1)
        t_ours, ours = best_time(lambda: solve_exact(problem, alpha=1.0, data=data), 3)
        t_choix, theirs = best_time(lambda: choix_fit(data, m, n), 3)
        rows.append({"n_contexts": m, "n_actions": n, "comparisons": N, "ours_s": t_ours,
                     "choix_s": t_choix, "ratio": t_choix / t_ours,
                     "max TV(ours, choix)": float(0.5 * np.abs(ours.policy - theirs).sum(1).max()),
                     "ours converged": ours.converged})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.quick)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_rows("fitting data: solve_exact(data=...) vs choix.ilsr_pairwise", rows)
    return rows


if __name__ == "__main__":
    main()
