"""Vectorised pair sampler vs choix.generate_pairwise (a per-pair Python loop) on the same rewards.

Prints pairs/s of both and the ratio (target >= 300x); our sampler on one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np

from _common import best_time, print_rows
from spo_tabular import make_problem, sample_pairs


def run(quick: bool):
    import choix
    rows = []
    n_ours, n_choix = (200_000, 2_000) if quick else (10_000_000, 50_000)
    for m, n in ((1, 64), (64, 64)):
        problem = make_problem(m, n, seed=0)
        t_ours, _ = best_time(lambda: sample_pairs(problem, n_ours, seed=1), 3)
        random.seed(1)
        # choix samples one context at a time: give it the same number of pairs per context.
        t_choix, _ = best_time(lambda: [choix.generate_pairwise(problem.rewards[x], n_choix // m)
                                        for x in range(m)], 1)
        ours, theirs = n_ours / t_ours, (n_choix // m) * m / t_choix
        rows.append({"sampler": "pairs (uniform, BT)", "n_contexts": m, "n_actions": n,
                     "ours pairs/s": ours, "choix pairs/s": theirs, "ratio": ours / theirs})
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
        print_rows("sampling: spo_tabular.sample_pairs vs choix.generate_pairwise", rows)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
