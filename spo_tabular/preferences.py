"""Expert preference models, pair distributions, population pair mass and vectorised samplers.

SPEC §2–§3. P[x, i, j] is the probability that the expert prefers i to j in context x; q[x, i, j]
the probability that the ordered pair (i, j) is shown; W[x, i, j] = ρ_x (q_ij + q_ji) P_ij the
population pair mass, the limit of the empirical frequency of (ctx=x, chosen=i, rejected=j).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit
import torch

from . import _validation as v
from .problems import TabularProblem

SAMPLERS = ("uniform", "ref")


# --------------------------------------------------------------------------- expert models

def bradley_terry(rewards: np.ndarray) -> np.ndarray:
    """P[x, i, j] = σ(r_xi − r_xj), shape (n_contexts, n_actions, n_actions); diagonal ½."""
    r = torch.tensor(np.asarray(rewards, dtype=np.float64))   # (m, n), copied: rewards may be read-only
    return torch.sigmoid(r[:, :, None] - r[:, None, :]).numpy()   # torch: ~10x numpy's expit here


def preference_matrix(problem: TabularProblem, preference=None) -> np.ndarray:
    """The expert's P (m, n, n): Bradley–Terry on the rewards when `preference` is None, else the checked array."""
    if preference is None:
        return bradley_terry(problem.rewards)
    m, n = problem.n_contexts, problem.n_actions
    P = v.float_array("preference", preference, shape=(m, n, n))
    if np.any((P < 0) | (P > 1)):
        raise ValueError("preference entries must be probabilities in [0, 1]")
    off = np.max(np.abs(P + P.transpose(0, 2, 1) - 1.0))
    if off > 1e-9:
        raise ValueError(f"preference must satisfy P + Pᵀ = 1 (within 1e-9); off by up to {off:.3g}")
    return P


# --------------------------------------------------------------------------- pair distributions

def pair_probs(problem: TabularProblem, sampler="uniform") -> np.ndarray:
    """q[x, i, j]: probability that the ordered pair (i, j), i ≠ j, is shown; shape (m, n, n), rows sum to 1."""
    m, n = problem.n_contexts, problem.n_actions
    if isinstance(sampler, str):
        v.choice("sampler", sampler, SAMPLERS)
        if sampler == "uniform":
            q = np.full((m, n, n), 1.0 / (n * (n - 1)))
        else:  # "ref": i, j drawn independently from π_ref, conditioned on i ≠ j
            p = problem.ref_policy
            q = p[:, :, None] * p[:, None, :] / (1.0 - np.sum(p * p, axis=1))[:, None, None]
        q[:, np.arange(n), np.arange(n)] = 0.0
        return q
    q = v.float_array("sampler", sampler, shape=(m, n, n))
    if np.any(q < 0):
        raise ValueError("sampler (pair-probability array) must be non-negative")
    if np.any(np.diagonal(q, axis1=1, axis2=2) != 0):
        raise ValueError("sampler (pair-probability array) must have a zero diagonal: pairs are of distinct actions")
    off = np.max(np.abs(q.sum(axis=(1, 2)) - 1.0))
    if off > 1e-9:
        raise ValueError(f"sampler (pair-probability array) must sum to 1 in each context; off by up to {off:.3g}")
    return q


def pair_mass(problem: TabularProblem, *, sampler="uniform", preference=None) -> np.ndarray:
    """Population W[x, i, j] = ρ_x (q_ij + q_ji) P_ij, shape (n_contexts, n_actions, n_actions), Σ W = 1."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    P = preference_matrix(problem, preference)
    if isinstance(sampler, str) and v.choice("sampler", sampler, SAMPLERS) == "uniform":
        n = problem.n_actions
        W = P * (problem.context_probs * (2.0 / (n * (n - 1))))[:, None, None]
        W[:, np.arange(n), np.arange(n)] = 0.0
        return W
    q = pair_probs(problem, sampler)
    return problem.context_probs[:, None, None] * (q + q.transpose(0, 2, 1)) * P


# --------------------------------------------------------------------------- sampled data

@dataclass(frozen=True, eq=False)
class PairData:
    """N sampled comparisons: ctx, chosen, rejected are int64 arrays of length N (SPEC §3)."""

    ctx: np.ndarray       # (N,) context index
    chosen: np.ndarray    # (N,) preferred action
    rejected: np.ndarray  # (N,) dispreferred action
    n_contexts: int
    n_actions: int

    def __post_init__(self):
        m = v.positive_int("n_contexts", self.n_contexts)
        n = v.positive_int("n_actions", self.n_actions, minimum=2)
        ctx = v.index_array("ctx", self.ctx, m)
        chosen = v.index_array("chosen", self.chosen, n)
        rejected = v.index_array("rejected", self.rejected, n)
        if not (ctx.shape == chosen.shape == rejected.shape):
            raise ValueError(f"ctx, chosen and rejected must have the same length, got "
                             f"{ctx.shape[0]}, {chosen.shape[0]}, {rejected.shape[0]}")
        if ctx.shape[0] == 0:
            raise ValueError("data must hold at least one comparison (ctx, chosen, rejected are empty)")
        if np.any(chosen == rejected):
            raise ValueError("chosen and rejected must differ in every comparison")
        for name, arr in (("ctx", ctx), ("chosen", chosen), ("rejected", rejected)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def _trusted(cls, ctx, chosen, rejected, n_contexts, n_actions) -> "PairData":
        """Build without the O(N) checks, for arrays our own samplers produced (valid by construction)."""
        out = object.__new__(cls)
        for name, value in (("ctx", ctx), ("chosen", chosen), ("rejected", rejected),
                            ("n_contexts", n_contexts), ("n_actions", n_actions)):
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(out, name, value)
        return out

    def __len__(self) -> int:
        return int(self.ctx.shape[0])

    def counts(self) -> np.ndarray:
        """count[x, i, j] of (ctx=x, chosen=i, rejected=j), shape (n_contexts, n_actions, n_actions), float64."""
        m, n = self.n_contexts, self.n_actions
        counts = np.zeros(m * n * n, dtype=np.int64)
        # In blocks: the flat cell index of all N pairs at once would be another 8N bytes.
        for start in range(0, len(self), 1 << 20):
            block = slice(start, start + (1 << 20))
            flat = (self.ctx[block] * n + self.chosen[block]) * n + self.rejected[block]
            counts += np.bincount(flat, minlength=m * n * n)
        return counts.astype(np.float64).reshape(m, n, n)

    def pair_mass(self) -> np.ndarray:
        """Empirical W = counts / N, shape (n_contexts, n_actions, n_actions), Σ W = 1."""
        return self.counts() / len(self)


_CHUNK = 1 << 16          # samples per block: keeps every temporary in cache (~3x faster than one pass)
_TABLE_LIMIT = 1 << 22    # largest (context, ordered pair) table kept for sampling


def _pair_table(problem: TabularProblem, sampler, preference):
    """The m·n(n−1) (context, ordered pair) cells: their draw probabilities (None = uniform) and P."""
    m, n = problem.n_contexts, problem.n_actions
    first, second = np.nonzero(~np.eye(n, dtype=bool))           # (n(n−1),) row-major ordered pairs
    uniform = (isinstance(sampler, str) and v.choice("sampler", sampler, SAMPLERS) == "uniform"
               and np.all(problem.context_probs == problem.context_probs[0]))
    probs = None
    if not uniform:
        q = pair_probs(problem, sampler)[:, first, second]        # (m, n(n−1))
        probs = (problem.context_probs[:, None] * q).ravel()
    P = None
    if preference is not None:
        P = preference_matrix(problem, preference)[:, first, second].ravel()
    elif m * first.size <= _TABLE_LIMIT:
        r = problem.rewards
        P = expit(r[:, first] - r[:, second]).ravel()
    return first, second, probs, P


def sample_pairs(problem: TabularProblem, n_pairs: int, *, seed, sampler="uniform",
                 preference=None) -> PairData:
    """Draw n_pairs comparisons: x ~ ρ, shown (i, j) ~ q(·|x), label i ≻ j with probability P[x, i, j]."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    N = v.positive_int("n_pairs", n_pairs)
    rng = v.rng_from(seed)
    m, n = problem.n_contexts, problem.n_actions
    first, second, probs, P = _pair_table(problem, sampler, preference)
    n_cells, per_ctx = m * first.size, first.size
    cdf = None
    if probs is not None:
        cdf = np.cumsum(probs)
        cdf /= cdf[-1]
    ctx = np.empty(N, np.int64)
    chosen = np.empty(N, np.int64)
    rejected = np.empty(N, np.int64)
    for start in range(0, N, _CHUNK):
        stop = min(N, start + _CHUNK)
        # One draw picks the (context, ordered pair) cell: uniform integers, or inverse CDF.
        if cdf is None:
            cell = rng.integers(0, n_cells, size=stop - start)
        else:
            cell = np.minimum(np.searchsorted(cdf, rng.random(stop - start), side="right"), n_cells - 1)
        x = ctx[start:stop]
        np.floor_divide(cell, per_ctx, out=x)
        k = cell - x * per_ctx
        a, b = first[k], second[k]
        if P is not None:
            p_first = P[cell]
        else:   # table too large: Bradley–Terry on the fly
            p_first = expit(problem.rewards[x, a] - problem.rewards[x, b])
        wins = rng.random(stop - start) < p_first
        np.copyto(chosen[start:stop], np.where(wins, a, b))
        np.subtract(a + b, chosen[start:stop], out=rejected[start:stop])
    return PairData._trusted(ctx, chosen, rejected, m, n)
