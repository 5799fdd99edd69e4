"""Vectorised samplers vs choix's per-sample Python loops on the same rewards.

Pairs: sample_pairs vs choix.generate_pairwise (target >= 300x the pairs/s). Best-of-n and
rankings: sample_best_of_n / sample_rankings vs choix.generate_rankings (target >= 100x the
samples/s; choix draws a Plackett–Luce ranking of a random k-subset, which is a best-of-k sample
too). Our samplers on one thread. Each side's time is the best of 3 calls.
"""
from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np

from _common import best_time, print_rows
from spo_tabular import make_problem, sample_best_of_n, sample_pairs, sample_rankings


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
                                        for x in range(m)], 3)
        ours, theirs = n_ours / t_ours, (n_choix // m) * m / t_choix
        rows.append({"sampler": "pairs (uniform, BT)", "n_contexts": m, "n_actions": n,
                     "ours /s": ours, "choix /s": theirs, "ratio": ours / theirs})
    n_ours, n_choix = (100_000, 1_000) if quick else (2_000_000, 20_000)
    problem = make_problem(1, 64, seed=0)
    for k in (4, 8):
        random.seed(1)
        t_choix, _ = best_time(lambda: choix.generate_rankings(problem.rewards[0], n_choix, size=k), 3)
        for name, fn in (("best-of-n", sample_best_of_n), ("rankings", sample_rankings)):
            t_ours, _ = best_time(lambda: fn(problem, n_ours, k, seed=1), 3)
            ours, theirs = n_ours / t_ours, n_choix / t_choix
            rows.append({"sampler": f"{name} k={k} (uniform, Luce)", "n_contexts": 1, "n_actions": 64,
                         "ours /s": ours, "choix /s": theirs, "ratio": ours / theirs})
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
