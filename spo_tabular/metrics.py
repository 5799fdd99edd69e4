"""Exact tabular metrics between policies (SPEC §7). Policies are (n_contexts, n_actions) arrays.

Per-context values come back as (n_contexts,) arrays; `policy_distances` reports the max and the
ρ-weighted mean, as SPEC §7 asks.
"""
from __future__ import annotations

import numpy as np
from scipy.special import rel_entr, xlogy

from . import _validation as v


def _policy(name, p, shape=None):
    arr = v.float_array(name, p, ndim=2, shape=shape)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative probabilities")
    off = np.max(np.abs(arr.sum(axis=1) - 1.0))
    if off > 1e-6:
        raise ValueError(f"{name} rows must sum to 1; off by up to {off:.3g}")
    return arr


def _pair(p, q):
    p = _policy("p", p)
    return p, _policy("q", q, shape=p.shape)


def tv(p, q) -> np.ndarray:
    """Total variation ½ Σ_y |p − q| per context, shape (n_contexts,)."""
    p, q = _pair(p, q)
    return 0.5 * np.abs(p - q).sum(axis=1)


def kl(p, q) -> np.ndarray:
    """KL(p ‖ q) = Σ_y p log(p/q) per context, shape (n_contexts,); inf where q = 0 < p."""
    p, q = _pair(p, q)
    # Σ p log(p/q) term by term (no cancellation between two large sums); rounding can leave −1e-17.
    return np.maximum(rel_entr(p, q).sum(axis=1), 0.0)


def max_abs_log_ratio(p, q) -> np.ndarray:
    """max_y |log p − log q| per context, shape (n_contexts,); inf where exactly one of p, q is 0 (0 where both are)."""
    p, q = _pair(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.abs(np.log(p) - np.log(q))
    # Only 0 vs 0 (NaN from −inf − −inf) is a zero distance; nan_to_num would also clip inf to 1.8e308.
    return np.nan_to_num(d, nan=0.0, posinf=np.inf).max(axis=1)


def entropy(p) -> np.ndarray:
    """Shannon entropy −Σ_y p log p per context (nats), shape (n_contexts,)."""
    p = _policy("p", p)
    return -xlogy(p, p).sum(axis=1)


def expected_reward(rewards, p) -> np.ndarray:
    """E_{y∼p}[r(x, y)] per context, shape (n_contexts,)."""
    r = v.float_array("rewards", rewards, ndim=2)
    return (_policy("p", p, shape=r.shape) * r).sum(axis=1)


def win_rate(problem, policy, other, preference=None) -> float:
    """WR(π, π') = Σ_x ρ_x Σ_ij π(i|x) π'(j|x) P[x,i,j] with P[x,i,i] = ½, a float in [0, 1]."""
    from .preferences import preference_matrix
    from .problems import TabularProblem
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    shape = (problem.n_contexts, problem.n_actions)
    p, q = _policy("policy", policy, shape=shape), _policy("other", other, shape=shape)
    P = preference_matrix(problem, preference).copy()
    n = problem.n_actions
    P[:, np.arange(n), np.arange(n)] = 0.5
    return float(np.einsum("x,xi,xj,xij->", problem.context_probs, p, q, P))


def weighted_mean(values, context_probs) -> float:
    """Σ_x ρ_x values_x for values and context_probs of shape (n_contexts,)."""
    values = v.float_array("values", values, ndim=1)
    rho = v.float_array("context_probs", context_probs, shape=values.shape)
    return float(np.dot(rho, values))


def policy_distances(policy, other, context_probs) -> dict:
    """max and ρ-weighted mean TV, ρ-weighted KL(policy ‖ other) and max |log ratio|, as a dict of floats."""
    tvs = tv(policy, other)
    rho = v.float_array("context_probs", context_probs, shape=tvs.shape)
    return {"max_tv": float(tvs.max()), "mean_tv": weighted_mean(tvs, rho),
            "kl": weighted_mean(kl(policy, other), rho),
            "max_log_ratio": float(max_abs_log_ratio(policy, other).max())}
