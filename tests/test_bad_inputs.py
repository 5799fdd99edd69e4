"""The catalogue of bad inputs: every one raises ValueError or TypeError whose message names the argument
and the form it should take; on the command line every one prints one line on stderr and exits 2.

One row per distinct defect (entry point × what is wrong). The message is matched literally, so a
reworded error shows up here and in docs/robustness.md together.
"""
import math
import re
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from spo_tabular import (BestOfNData, PairData, RankedData, TabularProblem, bradley_terry, make_problem,
                         oracle_policy, pair_mass, pair_probs, sample_best_of_n, sample_pairs, sample_rankings,
                         soft_optimal_policy, solve_exact, solve_rlhf)
from spo_tabular import metrics
from spo_tabular.checks import check_theorem1
from spo_tabular.cli import main
from spo_tabular.losses import (confidence_weights, cpo_loss, dpo_loss, hinge_loss, ipo_loss, spo_best_of_n_loss,
                                spo_loss, spo_ranked_loss)

NAN, INF = float("nan"), float("inf")
P = make_problem(3, 4, seed=0)                      # (n_contexts, n_actions) = (3, 4)
R2 = np.array([[0.0, 1.0], [1.0, -1.0]])           # a valid (2, 2) reward table
PAIRS = sample_pairs(P, 100, seed=0)
BEST = sample_best_of_n(P, 50, 3, seed=0)
U = np.full((2, 3), 1 / 3)                          # a valid (2, 3) policy
LP = torch.zeros(3, dtype=torch.float64)            # log-probabilities of 3 pairs
LPK = torch.zeros(3, 3, dtype=torch.float64)        # log-probabilities, 3 samples × k = 3


def _sampler(edit):
    """The uniform pair distribution of P (3, 4, 4) with one edit applied."""
    q = pair_probs(P, "uniform").copy()
    edit(q)
    return q


def _preference(edit):
    P_ = bradley_terry(P.rewards).copy()
    edit(P_)
    return P_


def _set(index, value):
    def edit(a):
        a[index] = value
    return edit


def esc(text):
    return re.escape(text)


# (id, call, exception, regex the message must match)
CASES = [
    # ------------------------------------------------------------------ TabularProblem
    ("problem/rewards-nan", lambda: TabularProblem([[0.0, NAN]]), ValueError, esc("rewards must be finite")),
    ("problem/rewards-inf", lambda: TabularProblem([[0.0, -INF], [1.0, 2.0]]), ValueError,
     esc("rewards must be finite; it holds 1 NaN/inf")),
    ("problem/rewards-1d", lambda: TabularProblem([0.0, 1.0]), ValueError, esc("rewards must be a 2-d array, got shape (2,)")),
    ("problem/rewards-3d", lambda: TabularProblem(np.zeros((2, 3, 1))), ValueError, esc("rewards must be a 2-d array")),
    ("problem/one-action", lambda: TabularProblem([[0.0], [1.0]]), ValueError,
     esc("rewards must have at least 2 actions (columns), got 1")),
    ("problem/no-context", lambda: TabularProblem(np.zeros((0, 3))), ValueError,
     esc("rewards must have at least one context (row)")),
    ("problem/rewards-complex", lambda: TabularProblem(np.ones((2, 2)) * 1j), TypeError,
     esc("rewards must be a real numeric array, got dtype complex128")),
    ("problem/rewards-strings", lambda: TabularProblem([["0", "1"]]), TypeError, esc("rewards must be a real numeric array")),
    ("problem/rewards-ragged", lambda: TabularProblem([[0.0, 1.0], [2.0]]), TypeError,
     esc("rewards must be a real numeric array, got list")),
    ("problem/ref-negative", lambda: TabularProblem(R2, [[1.5, -0.5], [0.5, 0.5]]), ValueError,
     esc("ref_policy must be strictly positive; found 1 entries <= 0")),
    ("problem/ref-zero", lambda: TabularProblem(R2, [[1.0, 0.0], [0.5, 0.5]]), ValueError,
     esc("ref_policy must be strictly positive")),
    ("problem/ref-sum", lambda: TabularProblem(R2, [[0.5, 0.5 + 1e-6], [0.5, 0.5]]), ValueError,
     esc("ref_policy rows must sum to 1 (within 1e-09); off by up to 1e-06")),
    ("problem/ref-shape", lambda: TabularProblem(R2, np.full((2, 3), 1 / 3)), ValueError,
     esc("ref_policy must have shape (2, 2), got (2, 3)")),
    ("problem/ref-nan", lambda: TabularProblem(R2, [[NAN, 0.5], [0.5, 0.5]]), ValueError, esc("ref_policy must be finite")),
    ("problem/context-zero", lambda: TabularProblem(R2, context_probs=[1.0, 0.0]), ValueError,
     esc("context_probs must be strictly positive")),
    ("problem/context-negative", lambda: TabularProblem(R2, context_probs=[1.5, -0.5]), ValueError,
     esc("context_probs must be strictly positive")),
    ("problem/context-sum", lambda: TabularProblem(R2, context_probs=[0.5, 0.6]), ValueError,
     esc("context_probs rows must sum to 1 (within 1e-09); off by up to 0.1")),
    ("problem/context-shape", lambda: TabularProblem(R2, context_probs=[1.0]), ValueError,
     esc("context_probs must have shape (2,), got (1,)")),
    # ------------------------------------------------------------------ make_problem, soft_optimal_policy
    ("make_problem/n_actions<2", lambda: make_problem(3, 1, seed=0), ValueError, esc("n_actions must be an integer >= 2, got 1")),
    ("make_problem/n_contexts=0", lambda: make_problem(0, 3, seed=0), ValueError, esc("n_contexts must be an integer >= 1, got 0")),
    ("make_problem/n_contexts-float", lambda: make_problem(3.0, 3, seed=0), TypeError,
     esc("n_contexts must be an integer, got float")),
    ("make_problem/reward_scale<0", lambda: make_problem(2, 3, seed=0, reward_scale=-1.0), ValueError,
     esc("reward_scale must be a finite number >= 0")),
    ("make_problem/ref-unknown", lambda: make_problem(2, 3, seed=0, ref="beta"), ValueError,
     esc("ref must be one of ['dirichlet', 'uniform'], got 'beta'")),
    ("make_problem/seed-missing", lambda: make_problem(2, 3, seed=None), TypeError, esc("seed must be given explicitly")),
    ("make_problem/seed<0", lambda: make_problem(2, 3, seed=-1), ValueError, esc("seed must be a non-negative integer")),
    ("make_problem/seed-float", lambda: make_problem(2, 3, seed=1.5), TypeError,
     esc("seed must be an int, SeedSequence or np.random.Generator, got float")),
    ("soft_optimal_policy/alpha=0", lambda: soft_optimal_policy(R2, 0.0), ValueError, esc("alpha must be a finite number > 0, got 0.0")),
    ("soft_optimal_policy/alpha<0", lambda: soft_optimal_policy(R2, -1.0), ValueError, esc("alpha must be a finite number > 0")),
    ("soft_optimal_policy/alpha-nan", lambda: soft_optimal_policy(R2, NAN), ValueError, esc("alpha must be finite, got nan")),
    ("soft_optimal_policy/alpha-inf", lambda: soft_optimal_policy(R2, INF), ValueError, esc("alpha must be finite, got inf")),
    ("soft_optimal_policy/alpha-bool", lambda: soft_optimal_policy(R2, True), TypeError, esc("alpha must be a real number, got bool")),
    ("soft_optimal_policy/alpha-str", lambda: soft_optimal_policy(R2, "1"), TypeError, esc("alpha must be a real number, got str")),
    ("soft_optimal_policy/alpha-array", lambda: soft_optimal_policy(R2, np.ones(2)), TypeError,
     esc("alpha must be a real number, got ndarray")),
    ("soft_optimal_policy/rewards-nan", lambda: soft_optimal_policy([[NAN, 0.0]], 1.0), ValueError, esc("rewards must be finite")),
    # ------------------------------------------------------------------ preference models and pair distributions
    ("bradley_terry/rewards-nan", lambda: bradley_terry([[0.0, NAN]]), ValueError, esc("rewards must be finite")),
    ("bradley_terry/rewards-1d", lambda: bradley_terry([0.0, 1.0]), ValueError, esc("rewards must be a 2-d array")),
    ("preference/shape", lambda: pair_mass(P, preference=np.full((3, 4, 3), 0.5)), ValueError,
     esc("preference must have shape (3, 4, 4), got (3, 4, 3)")),
    ("preference/above-1", lambda: pair_mass(P, preference=_preference(_set((0, 0, 1), 1.5))), ValueError,
     esc("preference entries must be probabilities in [0, 1]")),
    ("preference/not-complementary", lambda: pair_mass(P, preference=_preference(_set((0, 0, 1), 0.0))), ValueError,
     r"preference must satisfy P \+ Pᵀ = 1 \(within 1e-9\); off by up to 0\.\d+"),
    ("preference/nan", lambda: pair_mass(P, preference=_preference(_set((1, 2, 3), NAN))), ValueError,
     esc("preference must be finite")),
    ("preference/string", lambda: pair_mass(P, preference="thurstone"), TypeError,
     esc("preference must be a real numeric array")),
    ("sampler/unknown-name", lambda: pair_mass(P, sampler="softmax"), ValueError,
     esc("sampler must be one of ['ref', 'uniform'], got 'softmax'")),
    ("sampler/none", lambda: pair_probs(P, None), ValueError,
     esc("sampler must be one of ['ref', 'uniform'] or a pair-probability array of shape (n_contexts, n_actions, "
         "n_actions) = (3, 4, 4), got NoneType")),
    ("sampler/negative", lambda: pair_probs(P, _sampler(_set((0, 0, 1), -0.1))), ValueError,
     esc("sampler (pair-probability array) must be non-negative")),
    ("sampler/diagonal", lambda: pair_probs(P, _sampler(_set((0, 1, 1), 0.1))), ValueError,
     esc("sampler (pair-probability array) must have a zero diagonal")),
    ("sampler/sum", lambda: pair_probs(P, _sampler(_set((2, 0, 1), 0.5))), ValueError,
     r"sampler \(pair-probability array\) must sum to 1 in each context; off by up to 0\.4"),
    ("sampler/shape", lambda: pair_probs(P, np.zeros((3, 4, 5))), ValueError, esc("sampler must have shape (3, 4, 4), got (3, 4, 5)")),
    ("pair_probs/problem-type", lambda: pair_probs(R2, "uniform"), TypeError,
     esc("problem must be a TabularProblem, got ndarray")),
    ("sample_pairs/n_pairs=0", lambda: sample_pairs(P, 0, seed=0), ValueError, esc("n_pairs must be an integer >= 1, got 0")),
    ("sample_pairs/n_pairs-float", lambda: sample_pairs(P, 2.5, seed=0), TypeError, esc("n_pairs must be an integer, got float")),
    ("sample_pairs/problem-type", lambda: sample_pairs(R2, 5, seed=0), TypeError, esc("problem must be a TabularProblem")),
    ("sample_pairs/seed-str", lambda: sample_pairs(P, 5, seed="0"), TypeError, esc("seed must be an int")),
    # ------------------------------------------------------------------ PairData, BestOfNData, RankedData
    ("PairData/float-index", lambda: PairData(np.array([0.0]), [0], [1], 3, 4), TypeError,
     esc("ctx must hold integers, got dtype float64")),
    ("PairData/bool-index", lambda: PairData([0], np.array([True]), [0], 3, 4), TypeError,
     esc("chosen must hold integers, got dtype bool")),
    ("PairData/out-of-range", lambda: PairData([0], [4], [1], 3, 4), ValueError,
     esc("chosen entries must lie in [0, 4), got range [4, 4]")),
    ("PairData/negative-index", lambda: PairData([-1], [0], [1], 3, 4), ValueError, esc("ctx entries must lie in [0, 3)")),
    ("PairData/lengths", lambda: PairData([0, 1], [0, 1], [1], 3, 4), ValueError,
     esc("ctx, chosen and rejected must have the same length, got 2, 2, 1")),
    ("PairData/empty", lambda: PairData([], [], [], 3, 4), ValueError, esc("data must hold at least one comparison")),
    ("PairData/tie", lambda: PairData([0], [2], [2], 3, 4), ValueError, esc("chosen and rejected must differ")),
    ("PairData/2d-index", lambda: PairData([[0]], [[0]], [[1]], 3, 4), ValueError, esc("ctx must be a 1-d integer array")),
    ("PairData/n_actions-float", lambda: PairData([0], [0], [1], 3, 4.0), TypeError, esc("n_actions must be an integer")),
    ("sample_best_of_n/k>n_actions", lambda: sample_best_of_n(P, 10, 5, seed=0), ValueError,
     esc("k must be at most n_actions = 4, got 5")),
    ("sample_best_of_n/k=1", lambda: sample_best_of_n(P, 10, 1, seed=0), ValueError, esc("k must be an integer >= 2, got 1")),
    ("sample_best_of_n/sampler-unknown", lambda: sample_best_of_n(P, 10, 2, seed=0, sampler="softmax"), ValueError,
     esc("sampler must be one of ['ref', 'uniform'], got 'softmax'")),
    ("sample_rankings/n_samples=0", lambda: sample_rankings(P, 0, 2, seed=0), ValueError,
     esc("n_samples must be an integer >= 1, got 0")),
    ("sample_rankings/sampler-array", lambda: sample_rankings(P, 5, 2, seed=0, sampler=pair_probs(P)), ValueError,
     esc("sampler must be one of ['ref', 'uniform'], got ndarray")),
    ("BestOfNData/duplicate", lambda: BestOfNData([0], [[1, 1]], [0], 3, 4), ValueError,
     esc("shown must hold distinct actions within each row")),
    ("BestOfNData/best-out-of-range", lambda: BestOfNData([0], [[0, 1]], [2], 3, 4), ValueError,
     esc("best entries must lie in [0, 2)")),
    ("BestOfNData/float-shown", lambda: BestOfNData([0], [[0.0, 1.0]], [0], 3, 4), TypeError,
     esc("shown must hold integers, got dtype float64")),
    ("BestOfNData/1d-shown", lambda: BestOfNData([0], [0, 1], [0], 3, 4), ValueError,
     esc("shown must be a 2-d integer array of shape (N, k) with k >= 2")),
    ("BestOfNData/empty", lambda: BestOfNData([], np.zeros((0, 2), int), [], 3, 4), ValueError,
     esc("data must hold at least one sample")),
    ("RankedData/out-of-range", lambda: RankedData([0], [[0, 7]], 3, 4), ValueError, esc("ranking entries must lie in [0, 4)")),
    ("RankedData/rows", lambda: RankedData([0, 1], [[0, 1]], 3, 4), ValueError,
     esc("ranking must have 2 rows (one per sample), got 1")),
    # ------------------------------------------------------------------ per-sample losses
    ("spo_loss/alpha=0", lambda: spo_loss(LP, LP, alpha=0.0), ValueError, esc("alpha must be a finite number > 0")),
    ("spo_loss/integer-logp", lambda: spo_loss(torch.tensor([1]), LP, alpha=1.0), TypeError,
     esc("logp_chosen must be floating point (log-probabilities), got torch.int64")),
    ("spo_loss/string-logp", lambda: spo_loss(LP, "x", alpha=1.0), TypeError,
     esc("logp_rejected must be a floating-point tensor or array of log-probabilities, got str")),
    ("spo_loss/shapes", lambda: spo_loss(LP, torch.zeros(4), alpha=1.0), ValueError,
     esc("shapes do not broadcast: logp_chosen (3,), logp_rejected (4,)")),
    ("dpo_loss/ref-shape", lambda: dpo_loss(LP, LP, torch.zeros(4), LP, beta=1.0), ValueError,
     esc("ref_chosen (4,)")),
    ("dpo_loss/beta<0", lambda: dpo_loss(LP, LP, LP, LP, beta=-1.0), ValueError, esc("beta must be a finite number > 0")),
    ("ipo_loss/tau=0", lambda: ipo_loss(LP, LP, LP, LP, tau=0.0), ValueError, esc("tau must be a finite number > 0")),
    ("ipo_loss/tau-inf", lambda: ipo_loss(LP, LP, LP, LP, tau=INF), ValueError, esc("tau must be finite, got inf")),
    ("hinge_loss/beta-nan", lambda: hinge_loss(LP, LP, LP, LP, beta=NAN), ValueError, esc("beta must be finite, got nan")),
    ("cpo_loss/lam<0", lambda: cpo_loss(LP, LP, beta=1.0, lam=-0.5), ValueError, esc("lam must be a finite number >= 0")),
    ("loss/weights-negative", lambda: spo_loss(LP, LP, alpha=1.0, weights=-torch.ones(3)), ValueError,
     esc("weights must be non-negative")),
    ("loss/weights-nan", lambda: dpo_loss(LP, LP, LP, LP, beta=1.0, weights=torch.full((3,), NAN)), ValueError,
     esc("weights must be finite")),
    ("loss/weights-shape", lambda: ipo_loss(LP, LP, LP, LP, tau=1.0, weights=torch.ones(4)), ValueError,
     esc("weights of shape (4,) do not broadcast to the per-sample loss of shape (3,)")),
    ("loss/weights-string", lambda: spo_loss(LP, LP, alpha=1.0, weights="confidence"), TypeError,
     esc("weights must be None, a numeric array or a callable, got str")),
    ("spo_best_of_n_loss/float-best", lambda: spo_best_of_n_loss(LPK, torch.zeros(3), alpha=1.0), TypeError,
     esc("best must hold integer indices, got torch.float32")),
    ("spo_best_of_n_loss/best-none", lambda: spo_best_of_n_loss(LPK, None, alpha=1.0), TypeError,
     esc("best must be an integer tensor or array of shape (N,), got NoneType")),
    ("spo_best_of_n_loss/best-out-of-range", lambda: spo_best_of_n_loss(LPK, torch.tensor([0, 3, 1]), alpha=1.0), ValueError,
     esc("best entries must lie in [0, 3)")),
    ("spo_best_of_n_loss/logps-1d", lambda: spo_best_of_n_loss(LP, torch.zeros(3, dtype=torch.long), alpha=1.0), ValueError,
     esc("logps must have shape (N, k) with k >= 2, got (3,)")),
    ("spo_ranked_loss/k=1", lambda: spo_ranked_loss(torch.zeros(3, 1), alpha=1.0), ValueError,
     esc("logps must have shape (N, k) with k >= 2, got (3, 1)")),
    ("confidence_weights/gamma-inf", lambda: confidence_weights(LPK, alpha=1.0, gamma=INF), ValueError,
     esc("gamma must be finite, got inf")),
    # ------------------------------------------------------------------ solve_exact
    ("solve_exact/loss-unknown", lambda: solve_exact(P, loss="kto", alpha=1.0), ValueError,
     esc("loss must be one of ['cpo', 'dpo', 'hinge', 'ipo', 'spo', 'spo_best_of_n', 'spo_ranked'], got 'kto'")),
    ("solve_exact/problem-type", lambda: solve_exact(None, alpha=1.0), TypeError, esc("problem must be a TabularProblem, got NoneType")),
    ("solve_exact/alpha-missing", lambda: solve_exact(P), TypeError, esc("alpha is required for loss='spo'")),
    ("solve_exact/alpha-inf", lambda: solve_exact(P, alpha=INF), ValueError, esc("alpha must be finite, got inf")),
    ("solve_exact/param-not-taken", lambda: solve_exact(P, alpha=1.0, tau=0.5), ValueError,
     esc("tau not used by loss='spo' (it takes alpha, beta, weights)")),
    ("solve_exact/spo-beta<0", lambda: solve_exact(P, alpha=1.0, beta=-0.1), ValueError,
     esc("beta must be a finite number >= 0, got -0.1")),
    ("solve_exact/dpo-beta=0", lambda: solve_exact(P, loss="dpo", beta=0.0), ValueError,
     esc("beta must be a finite number > 0, got 0.0")),
    ("solve_exact/ipo-tau-missing", lambda: solve_exact(P, loss="ipo"), TypeError, esc("tau is required for loss='ipo'")),
    ("solve_exact/ipo-tau-nan", lambda: solve_exact(P, loss="ipo", tau=NAN), ValueError, esc("tau must be finite")),
    ("solve_exact/cpo-lam<0", lambda: solve_exact(P, loss="cpo", beta=1.0, lam=-1.0), ValueError,
     esc("lam must be a finite number >= 0")),
    ("solve_exact/k>n_actions", lambda: solve_exact(P, loss="spo_best_of_n", alpha=1.0, k=5), ValueError,
     esc("k must be at most n_actions = 4, got 5")),
    ("solve_exact/k-missing", lambda: solve_exact(P, loss="spo_ranked", alpha=1.0), TypeError,
     esc("k is required for loss='spo_ranked'")),
    ("solve_exact/k-float", lambda: solve_exact(P, loss="spo_ranked", alpha=1.0, k=2.0), TypeError,
     esc("k must be an integer, got float")),
    ("solve_exact/k-vs-data", lambda: solve_exact(P, loss="spo_best_of_n", alpha=1.0, k=2, data=BEST), ValueError,
     esc("k=2 does not match the data, which shows k=3 actions per sample")),
    ("solve_exact/data-type", lambda: solve_exact(P, loss="spo_best_of_n", alpha=1.0, data=PAIRS), TypeError,
     esc("data for loss='spo_best_of_n' must be a BestOfNData or None, got PairData")),
    ("solve_exact/data-size", lambda: solve_exact(make_problem(2, 4, seed=0), alpha=1.0, data=PAIRS), ValueError,
     esc("data has (n_contexts, n_actions) = (3, 4), problem has (2, 4)")),
    ("solve_exact/data-with-sampler", lambda: solve_exact(P, alpha=1.0, data=PAIRS, sampler="ref"), ValueError,
     esc("sampler must be left at its default 'uniform' when data is given")),
    ("solve_exact/data-with-preference", lambda: solve_exact(P, loss="dpo", beta=1.0, data=PAIRS,
                                                             preference=bradley_terry(P.rewards)), ValueError,
     esc("preference must be None when data is given")),
    ("solve_exact/preference-with-best-of-n", lambda: solve_exact(P, loss="spo_best_of_n", alpha=1.0, k=2,
                                                                  preference=bradley_terry(P.rewards)), ValueError,
     esc("preference must be None for loss='spo_best_of_n'")),
    ("solve_exact/ranked-population-sampler", lambda: solve_exact(P, loss="spo_ranked", alpha=1.0, k=2, sampler="ref"),
     ValueError, esc("sampler must be 'uniform' for the population spo_ranked objective")),
    ("solve_exact/best-of-n-population-sampler-array", lambda: solve_exact(P, loss="spo_best_of_n", alpha=1.0, k=2,
                                                                           sampler=pair_probs(P)), ValueError,
     esc("sampler must be 'uniform' for the population spo_best_of_n objective (shown k-sets uniform among the "
         "k-subsets), got ndarray")),
    ("solve_exact/loss-array", lambda: solve_exact(P, loss=np.zeros((3, 3))), ValueError,
     esc("loss must be one of ['cpo', 'dpo', 'hinge', 'ipo', 'spo', 'spo_best_of_n', 'spo_ranked'], got ndarray")),
    ("solve_exact/weights-negative", lambda: solve_exact(P, alpha=1.0, weights=-np.ones((3, 4, 4))), ValueError,
     esc("weights must be non-negative")),
    ("solve_exact/weights-per-sample-length", lambda: solve_exact(P, loss="ipo", tau=1.0, data=PAIRS, weights=np.ones(7)),
     ValueError, esc("weights must have shape (100,), got (7,)")),
    ("solve_exact/weights-callable", lambda: solve_exact(P, alpha=1.0, weights=lambda lp: lp), TypeError,
     esc("weights must be a real numeric array, got function")),
    ("solve_exact/tol=0", lambda: solve_exact(P, alpha=1.0, tol=0.0), ValueError, esc("tol must be a finite number > 0")),
    ("solve_exact/max_iter=0", lambda: solve_exact(P, alpha=1.0, max_iter=0), ValueError,
     esc("max_iter must be an integer >= 1, got 0")),
    ("solve_exact/max_iter-float", lambda: solve_exact(P, alpha=1.0, max_iter=10.0), TypeError,
     esc("max_iter must be an integer, got float")),
    ("solve_exact/executor-type", lambda: solve_exact(P, alpha=1.0, beta=0.1, executor="pool"), TypeError,
     esc("executor must be a concurrent.futures.Executor, got str")),
    ("solve_exact/executor-with-data", lambda: solve_exact(P, alpha=1.0, data=PAIRS, executor=ThreadPoolExecutor(1)),
     ValueError, esc("executor applies to population solves (data=None)")),
    ("solve_exact/executor-not-taken", lambda: solve_exact(P, loss="dpo", beta=1.0, executor=ThreadPoolExecutor(1)),
     ValueError, esc("executor not used by loss='dpo'")),
    # ------------------------------------------------------------------ solve_rlhf, oracle_policy
    ("solve_rlhf/beta=0", lambda: solve_rlhf(P, beta=0.0), ValueError, esc("beta must be a finite number > 0")),
    ("solve_rlhf/data-type", lambda: solve_rlhf(P, beta=1.0, data=R2), TypeError,
     esc("data must be a PairData, BestOfNData, RankedData or None, got ndarray")),
    ("solve_rlhf/sampler-unknown", lambda: solve_rlhf(P, beta=1.0, sampler="softmax"), ValueError,
     esc("sampler must be one of ['ref', 'uniform'], got 'softmax'")),
    ("solve_rlhf/data-with-preference", lambda: solve_rlhf(P, beta=1.0, data=BEST, preference=bradley_terry(P.rewards)),
     ValueError, esc("preference must be None when data is given")),
    ("oracle_policy/loss-unknown", lambda: oracle_policy(P, loss="kto"), ValueError,
     esc("loss must be one of ['cpo', 'dpo', 'hinge', 'ipo', 'rlhf', 'spo', 'spo_best_of_n', 'spo_ranked'], got 'kto'")),
    ("oracle_policy/param-not-taken", lambda: oracle_policy(P, loss="dpo", beta=1.0, alpha=1.0), ValueError,
     esc("alpha is not a parameter of loss='dpo'")),
    ("oracle_policy/k>n_actions", lambda: oracle_policy(P, loss="spo_ranked", alpha=1.0, k=9), ValueError,
     esc("k must be at most n_actions = 4, got 9")),
    ("oracle_policy/ranked-sampler-array", lambda: oracle_policy(P, loss="spo_ranked", alpha=1.0, k=2,
                                                                 sampler=pair_probs(P)), ValueError,
     esc("sampler must be 'uniform' for loss='spo_ranked' (shown k-sets uniform), got ndarray")),
    ("oracle_policy/tau<0", lambda: oracle_policy(P, loss="ipo", tau=-2.0), ValueError, esc("tau must be a finite number > 0")),
    # ------------------------------------------------------------------ metrics
    ("tv/shapes", lambda: metrics.tv(U, np.full((2, 4), 0.25)), ValueError, esc("q must have shape (2, 3), got (2, 4)")),
    ("kl/negative", lambda: metrics.kl([[1.5, -0.5, 0.0]], [[0.2, 0.3, 0.5]]), ValueError,
     esc("p must be non-negative probabilities")),
    ("entropy/sum", lambda: metrics.entropy([[0.5, 0.6]]), ValueError, esc("p rows must sum to 1; off by up to 0.1")),
    ("entropy/1d", lambda: metrics.entropy([0.5, 0.5]), ValueError, esc("p must be a 2-d array, got shape (2,)")),
    ("max_abs_log_ratio/nan", lambda: metrics.max_abs_log_ratio([[NAN, 0.5]], [[0.5, 0.5]]), ValueError,
     esc("p must be finite")),
    ("expected_reward/shapes", lambda: metrics.expected_reward(R2, U), ValueError, esc("p must have shape (2, 2), got (2, 3)")),
    ("win_rate/problem-type", lambda: metrics.win_rate(R2, U, U), TypeError, esc("problem must be a TabularProblem")),
    ("win_rate/policy-shape", lambda: metrics.win_rate(P, U, U), ValueError, esc("policy must have shape (3, 4), got (2, 3)")),
    ("weighted_mean/shapes", lambda: metrics.weighted_mean(np.ones(3), np.full(4, 0.25)), ValueError,
     esc("context_probs must have shape (3,), got (4,)")),
    # ------------------------------------------------------------------ check_theorem1
    ("check_theorem1/alpha<0", lambda: check_theorem1(P, alpha=-1.0), ValueError, esc("alpha must be a finite number > 0")),
    ("check_theorem1/beta-nan", lambda: check_theorem1(P, alpha=1.0, beta=NAN), ValueError, esc("beta must be finite")),
    ("check_theorem1/tol=0", lambda: check_theorem1(P, alpha=1.0, tol=0.0), ValueError, esc("tol must be a finite number > 0")),
    ("check_theorem1/sampler-unknown", lambda: check_theorem1(P, alpha=1.0, sampler="softmax"), ValueError,
     esc("sampler must be one of ['ref', 'uniform']")),
    ("check_theorem1/problem-type", lambda: check_theorem1("problem", alpha=1.0), TypeError,
     esc("problem must be a TabularProblem, got str")),
]

CLI_CASES = [
    (["theorem1", "--alpha", "-1"], "alpha must be a finite number > 0"),
    (["theorem1", "--alpha", "0"], "alpha must be a finite number > 0, got 0.0"),
    (["theorem1", "--alpha", "nan"], "alpha must be finite, got nan"),
    (["theorem1", "--alpha", "inf"], "alpha must be finite, got inf"),
    (["theorem1", "--alpha", "1e400"], "alpha must be finite, got inf"),
    (["theorem1", "--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
    (["theorem1", "--beta", "-0.5"], "beta must be a finite number >= 0"),
    (["theorem1", "--n-actions", "1"], "n_actions must be an integer >= 2, got 1"),
    (["theorem1", "--n-contexts", "0"], "n_contexts must be an integer >= 1, got 0"),
    (["theorem1", "--n-contexts", "2.5"], "argument --n-contexts: invalid int value: '2.5'"),
    (["theorem1", "--tol", "0"], "tol must be a finite number > 0"),
    (["theorem1", "--seed", "-1"], "seed must be a non-negative integer, got -1"),
    (["theorem1", "--reward-scale", "-1"], "reward_scale must be a finite number >= 0"),
    (["theorem1", "--sampler", "bogus"], "sampler must be one of ['ref', 'uniform'], got 'bogus'"),
    (["theorem1", "--ref", "bogus"], "ref must be one of ['dirichlet', 'uniform'], got 'bogus'"),
    (["theorem1", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["check", "--loss", "kto"], "argument --loss: invalid choice: 'kto'"),
    (["check"], "the following arguments are required: --loss"),
    (["check", "--loss", "dpo", "--tau", "1"], "tau not used by loss 'dpo' (it takes beta)"),
    (["check", "--loss", "rlhf", "--alpha", "1"], "alpha not used by loss 'rlhf' (it takes beta)"),
    (["check", "--loss", "spo", "--k", "3"], "k not used by loss 'spo' (it takes alpha, beta)"),
    (["check", "--loss", "spo", "--alpha", "0"], "alpha must be a finite number > 0"),
    (["check", "--loss", "spo", "--beta", "-1"], "beta must be a finite number >= 0"),
    (["check", "--loss", "dpo", "--beta", "0"], "beta must be a finite number > 0"),
    (["check", "--loss", "ipo", "--tau=-inf"], "tau must be finite, got -inf"),
    (["check", "--loss", "cpo", "--lam", "-1"], "lam must be a finite number >= 0"),
    (["check", "--loss", "spo_ranked", "--k", "9"], "k must be at most n_actions = 5, got 9"),
    (["check", "--loss", "spo_best_of_n", "--k", "1"], "k must be an integer >= 2, got 1"),
    (["check", "--loss", "spo_best_of_n", "--sampler", "ref"], "sampler must be 'uniform' for the population"),
    (["check", "--loss", "hinge", "--tol", "-1"], "tol must be a finite number > 0"),
    (["check", "--loss", "spo", "--n-actions", "1"], "n_actions must be an integer >= 2"),
    (["reproduce", "--bogus"], "unrecognized arguments: --bogus"),
    (["reproduce", "extra"], "unrecognized arguments: extra"),
    ([], "the following arguments are required: command"),
    (["nope"], "argument command: invalid choice: 'nope'"),
]




def test_the_catalogue_holds_at_least_40_distinct_bad_inputs():
    ids = [case[0] for case in CASES]
    assert len(set(ids)) == len(ids), "duplicate ids"
    cli = [" ".join(argv) for argv, _ in CLI_CASES]
    assert len(set(cli)) == len(cli)
    assert len(ids) >= 40 and len(cli) >= 20


def test_every_public_entry_point_is_in_the_catalogue():
    entries = {case[0].split("/")[0] for case in CASES}
    assert {"problem", "make_problem", "soft_optimal_policy", "bradley_terry", "preference", "sampler", "pair_probs",
            "sample_pairs", "PairData", "sample_best_of_n", "sample_rankings", "BestOfNData", "RankedData",
            "spo_loss", "spo_best_of_n_loss", "spo_ranked_loss", "dpo_loss", "ipo_loss", "hinge_loss", "cpo_loss",
            "confidence_weights", "solve_exact", "solve_rlhf", "oracle_policy", "tv", "kl", "entropy",
            "max_abs_log_ratio", "expected_reward", "win_rate", "weighted_mean", "check_theorem1"} <= entries
    commands = {argv[0] for argv, _ in CLI_CASES if argv}
    assert {"theorem1", "check", "reproduce"} <= commands


@pytest.mark.parametrize("call, error, match", [pytest.param(c, e, m, id=i) for i, c, e, m in CASES])
def test_a_bad_input_raises_a_message_naming_the_argument(call, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no warning on the way to the error
        with pytest.raises(error, match=match) as info:
            call()
    assert type(info.value) in (ValueError, TypeError) or issubclass(type(info.value), (ValueError, TypeError))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv, match", [pytest.param(a, m, id=" ".join(a) or "(none)") for a, m in CLI_CASES])
def test_the_cli_prints_one_line_and_exits_2(argv, match, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("spo-tabular: error: ") and match in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_the_cli_exit_code_and_stderr_in_a_real_process():
    """As a user sees it: exit status 2, one line, no traceback (main() calls sys.exit)."""
    proc = subprocess.run([sys.executable, "-m", "spo_tabular.cli", "check", "--loss", "ipo", "--tau=nan"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["spo-tabular: error: tau must be finite, got nan"]


def test_a_message_with_a_line_break_is_still_one_cli_line(capsys, monkeypatch):
    import spo_tabular.cli as cli

    def broken(args):
        raise ValueError("first line\nsecond line")
    monkeypatch.setitem(cli.COMMANDS, "reproduce", (cli.COMMANDS["reproduce"][0], cli.COMMANDS["reproduce"][1], broken))
    assert main(["reproduce"]) == 2
    assert capsys.readouterr().err == "spo-tabular: error: first line second line\n"


def test_float16_and_bfloat16_arrays_are_accepted_and_upcast():
    """Low precision is not a bad input: numpy float16 and torch bfloat16 tables become float64."""
    rewards = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.bfloat16)
    problem = TabularProblem(rewards, np.array([[0.25, 0.25, 0.5]], dtype=np.float16))
    assert problem.rewards.dtype == problem.ref_policy.dtype == np.float64
    assert problem.rewards.tolist() == [[0.5, -1.0, 2.0]]
    assert TabularProblem(np.array([[0.5, 1.0]], dtype=np.float16)).rewards.dtype == np.float64
    assert soft_optimal_policy(rewards, torch.tensor(2.0, dtype=torch.float16)).dtype == np.float64
    assert math.isclose(soft_optimal_policy(rewards, 1.0).sum(), 1.0)
