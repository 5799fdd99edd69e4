"""Helpers shared by the experiments: exact policy metrics as flat row fields, fits, intervals."""
from __future__ import annotations

import warnings

import numpy as np

from ..metrics import entropy, expected_reward, kl, tv, weighted_mean, win_rate


def policy_metrics(problem, policy, *, target=None, preference=None, prefix: str = "") -> dict:
    """Exact metrics of a policy (m, n) as row fields: TV to the target (max, ρ-mean), TV and KL to π_ref,
    entropy, expected reward (ρ-means), min probability and the expert win rate against π_ref."""
    rho = problem.context_probs
    row = {}
    if target is not None:
        d = tv(policy, target)
        row.update(max_tv_to_target=float(d.max()), mean_tv_to_target=weighted_mean(d, rho))
    row.update(
        tv_to_ref=weighted_mean(tv(policy, problem.ref_policy), rho),
        kl_to_ref=weighted_mean(kl(policy, problem.ref_policy), rho),
        entropy=weighted_mean(entropy(policy), rho),
        expected_reward=weighted_mean(expected_reward(problem.rewards, policy), rho),
        min_prob=float(np.min(policy)),
        win_rate_vs_ref=win_rate(problem, policy, problem.ref_policy, preference=preference),
    )
    return {prefix + k: x for k, x in row.items()}


def quietly(fn, *args, **kwargs):
    """Call a solver with its RuntimeWarnings silenced: experiments record the status column instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x over the finite, positive points (NaN if < 2 points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def mean_interval(values, level: float = 0.95):
    """(mean, low, high): Student-t interval of the mean over independent runs (NaN bounds for one run)."""
    from scipy import stats      # imported here: scipy.stats is slow to import and only summaries need it
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(a.mean())
    if a.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))
    return mean, mean - half, mean + half
