"""Batched exact solving vs separate solve_exact calls on a 64-configuration α × seed sweep.

The sweep of the `scaling` experiment: 8 values of α (log-spaced 0.1 … 10) × 8 seeds; each seed
is its own random problem (n_contexts × n_actions, Bradley–Terry) with its own sampled data set of
N pairs, β = 0 (the empirical minimiser). Both sides return the same 64 policies (max TV between
them printed); the ratio is the best-of-`repeat` time of 64 `solve_exact` calls over one
`solve_exact_batched` call. `--beta` adds a global KL term. `--quick` shrinks the sweep (CI smoke run).
"""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

from _common import best_time
from spo_tabular import make_problem, sample_pairs, solve_exact
from spo_tabular.metrics import tv
from spo_tabular.solvers.batched import solve_exact_batched


def run(n_contexts, n_actions, n_pairs, n_alpha, n_seeds, beta, repeat):
    alphas = np.repeat(np.logspace(-1, 1, n_alpha), n_seeds)          # (n_alpha · n_seeds,)
    seeds = np.tile(np.arange(n_seeds), n_alpha)
    problems = {s: make_problem(n_contexts, n_actions, seed=int(s)) for s in range(n_seeds)}
    datas = {s: sample_pairs(problems[s], n_pairs, seed=1000 + int(s)) for s in range(n_seeds)}
    configs = [(problems[s], datas[s], float(a)) for s, a in zip(seeds, alphas)]

    def separate():
        return [solve_exact(p, alpha=a, beta=beta, data=d) for p, d, a in configs]

    def batched():
        return solve_exact_batched([c[0] for c in configs], alpha=alphas, beta=beta, data=[c[1] for c in configs])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # statuses are compared below instead
        separate(), batched()                              # warm-up (kernels, allocator)
        t_sep, sep = best_time(separate, repeat)
        t_bat, bat = best_time(batched, repeat)
    return {
        "configs": len(configs), "problem": f"({n_contexts}, {n_actions})", "n_pairs": n_pairs, "beta": beta,
        "separate_s": t_sep, "batched_s": t_bat, "ratio": t_sep / t_bat,
        "max_tv_between": float(max(tv(a.policy, b.policy).max() for a, b in zip(sep, bat))),
        "same_status": all(a.status == b.status for a, b in zip(sep, bat)),
        "statuses": sorted({b.status for b in bat}),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 2 × 2 sweep of tiny problems (CI smoke run)")
    ap.add_argument("--n-contexts", type=int, default=8)
    ap.add_argument("--n-actions", type=int, default=8)
    ap.add_argument("--n-pairs", type=int, default=5000)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        row = run(2, 3, 200, 2, 2, args.beta, 1)
    else:
        row = run(args.n_contexts, args.n_actions, args.n_pairs, 8, 8, args.beta, args.repeat)
    if args.json:
        print(json.dumps(row, indent=2))
        return row
    print(f"{row['configs']}-configuration alpha x seed sweep, problems {row['problem']}, N={row['n_pairs']} pairs, "
          f"beta={row['beta']:g}, torch threads={row['torch_threads']}")
    print(f"  separate solve_exact calls {row['separate_s'] * 1e3:9.1f} ms")
    print(f"  solve_exact_batched        {row['batched_s'] * 1e3:9.1f} ms")
    print(f"  ratio                      {row['ratio']:9.1f}x")
    print(f"  max TV between the answers {row['max_tv_between']:.1e}; same statuses: {row['same_status']} {row['statuses']}")
    return row


if __name__ == "__main__":
    main()
