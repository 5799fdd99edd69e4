"""Expert preference models, pair distributions, population pair mass and vectorised samplers.

SPEC §2–§3. P[x, i, j] is the probability that the expert prefers i to j in context x; q[x, i, j]
the probability that the ordered pair (i, j) is shown; W[x, i, j] = ρ_x (q_ij + q_ji) P_ij the
population pair mass, the limit of the empirical frequency of (ctx=x, chosen=i, rejected=j).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from . import _validation as v
from .problems import TabularProblem

SAMPLERS = ("uniform", "ref")


# --------------------------------------------------------------------------- expert models

def bradley_terry(rewards: np.ndarray) -> np.ndarray:
    """P[x, i, j] = σ(r_xi − r_xj), shape (n_contexts, n_actions, n_actions); diagonal ½."""
    r = np.asarray(rewards, dtype=np.float64)
    return expit(r[:, :, None] - r[:, None, :])


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

    def __len__(self) -> int:
        return int(self.ctx.shape[0])

    def counts(self) -> np.ndarray:
        """count[x, i, j] of (ctx=x, chosen=i, rejected=j), shape (n_contexts, n_actions, n_actions), float64."""
        m, n = self.n_contexts, self.n_actions
        flat = (self.ctx * n + self.chosen) * n + self.rejected
        return np.bincount(flat, minlength=m * n * n).astype(np.float64).reshape(m, n, n)

    def pair_mass(self) -> np.ndarray:
        """Empirical W = counts / N, shape (n_contexts, n_actions, n_actions), Σ W = 1."""
        return self.counts() / len(self)


def _sample_contexts(rng, context_probs: np.ndarray, size: int) -> np.ndarray:
    m = context_probs.shape[0]
    if np.all(context_probs == context_probs[0]):
        return rng.integers(0, m, size=size)
    cdf = np.cumsum(context_probs)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), m - 1)


def _sample_shown_pairs(rng, q: np.ndarray, ctx: np.ndarray):
    """Draw the shown ordered pair (i, j) ~ q[ctx] for every sample: one flat inverse-CDF search."""
    m, n, _ = q.shape
    cdf = np.cumsum(q.reshape(m, n * n), axis=1)
    cdf /= cdf[:, -1:]
    cdf += np.arange(m)[:, None]      # context x's CDF lives in [x, x + 1]: one sorted array for all
    flat = np.searchsorted(cdf.ravel(), ctx + rng.random(ctx.shape[0]), side="right")
    flat = np.minimum(flat, (ctx + 1) * n * n - 1) - ctx * n * n
    return flat // n, flat % n


def sample_pairs(problem: TabularProblem, n_pairs: int, *, seed, sampler="uniform",
                 preference=None) -> PairData:
    """Draw n_pairs comparisons: x ~ ρ, shown (i, j) ~ q(·|x), label i ≻ j with probability P[x, i, j]."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    N = v.positive_int("n_pairs", n_pairs)
    rng = v.rng_from(seed)
    m, n = problem.n_contexts, problem.n_actions
    ctx = _sample_contexts(rng, problem.context_probs, N)
    if isinstance(sampler, str) and v.choice("sampler", sampler, SAMPLERS) == "uniform":
        # Uniform over ordered distinct pairs: j uniform on the n-1 others (skip i).
        first = rng.integers(0, n, size=N)
        second = rng.integers(0, n - 1, size=N)
        second += second >= first
    else:
        first, second = _sample_shown_pairs(rng, pair_probs(problem, sampler), ctx)
    if preference is None:
        r = problem.rewards
        p_first = expit(r[ctx, first] - r[ctx, second])
    else:
        p_first = preference_matrix(problem, preference)[ctx, first, second]
    first_wins = rng.random(N) < p_first
    chosen = np.where(first_wins, first, second)
    rejected = np.where(first_wins, second, first)
    return PairData(ctx, chosen, rejected, m, n)


# --------------------------------------------------------------------------- expert models beyond Bradley–Terry
# SPEC §2. Each constructor returns an (m, n, n) array with P + Pᵀ = 1 (diagonal ½): pass it as
# `preference=` to pair_mass, sample_pairs, solve_exact or win_rate.

def label_noise(preference, noise: float) -> np.ndarray:
    """Flip each label with probability ε: P' = (1 − ε) P + ε Pᵀ, shape of P; ε ∈ [0, ½]."""
    eps = v.nonnegative_float("noise", noise)
    if eps > 0.5:
        raise ValueError(f"noise must lie in [0, 0.5] (a flip probability above ½ reverses the expert), got {eps}")
    P = v.float_array("preference", preference, ndim=3)
    return (1.0 - eps) * P + eps * P.transpose(0, 2, 1)


def noisy_bradley_terry(rewards, noise: float) -> np.ndarray:
    """P = (1 − ε) σ(r_i − r_j) + ε σ(r_j − r_i), shape (n_contexts, n_actions, n_actions)."""
    return label_noise(bradley_terry(v.float_array("rewards", rewards, ndim=2)), noise)


def thurstone(rewards) -> np.ndarray:
    """Thurstone (probit): P = Φ(r_i − r_j), Φ the standard normal CDF; shape (m, n, n)."""
    from scipy.special import ndtr
    r = v.float_array("rewards", rewards, ndim=2)
    return ndtr(r[:, :, None] - r[:, None, :])


def deterministic_preferences(rewards) -> np.ndarray:
    """P = 1[r_i > r_j] + ½·1[r_i = r_j]: the expert always picks the higher reward; shape (m, n, n)."""
    r = v.float_array("rewards", rewards, ndim=2)
    d = r[:, :, None] - r[:, None, :]
    return (d > 0) + 0.5 * (d == 0)


def cyclic_preferences(n_contexts: int, n_actions: int, *, strength: float = 1.0) -> np.ndarray:
    """Rock–paper–scissors: i beats i+1, …, i+⌊(n−1)/2⌋ (mod n) with probability `strength` ∈ [½, 1]; shape (m, n, n).

    No reward ranks the actions: every action beats as many as beat it (a regular tournament for odd
    n; for even n the opposite action ties at ½).
    """
    m = v.positive_int("n_contexts", n_contexts)
    n = v.positive_int("n_actions", n_actions, minimum=3)
    s = v.real_float("strength", strength)
    if not 0.5 <= s <= 1.0:
        raise ValueError(f"strength must lie in [0.5, 1], got {s}")
    ahead = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n     # (n, n): j − i mod n
    half = (n - 1) // 2
    P = np.full((n, n), 0.5)
    P[(ahead >= 1) & (ahead <= half)] = s
    P[(ahead >= n - half) & (ahead <= n - 1)] = 1.0 - s
    return np.broadcast_to(P, (m, n, n)).copy()


def complete_preferences(upper) -> np.ndarray:
    """An arbitrary expert from its upper triangle: P[x, i, j] for i < j is kept, P_ji = 1 − P_ij, P_ii = ½."""
    U = v.float_array("upper", upper, ndim=3)
    if U.shape[1] != U.shape[2]:
        raise ValueError(f"upper must have shape (n_contexts, n_actions, n_actions), got {U.shape}")
    n = U.shape[1]
    iu = np.triu(np.ones((n, n), dtype=bool), k=1)
    if np.any((U[:, iu] < 0) | (U[:, iu] > 1)):
        raise ValueError("upper's entries above the diagonal must be probabilities in [0, 1]")
    P = np.where(iu, U, 0.0)
    P = P + np.where(iu.T, 1.0 - P.transpose(0, 2, 1), 0.0)
    P[:, np.arange(n), np.arange(n)] = 0.5
    return P


EXPERT_MODELS = {
    "bt": lambda problem: bradley_terry(problem.rewards),
    "noisy": lambda problem: bradley_terry(problem.rewards),   # with the `noise` flip applied below
    "thurstone": lambda problem: thurstone(problem.rewards),
    "deterministic": lambda problem: deterministic_preferences(problem.rewards),
    "cyclic": lambda problem: cyclic_preferences(problem.n_contexts, problem.n_actions),
}


def expert_preferences(problem: TabularProblem, model: str = "bt", *, noise: float = 0.0) -> np.ndarray:
    """The named expert's P (m, n, n) on the problem's rewards, with labels flipped with probability `noise`.

    model: "bt" σ(Δ), "noisy" (BT with label noise; the same as "bt" with noise > 0), "thurstone"
    Φ(Δ), "deterministic" 1[Δ > 0] + ½·1[Δ = 0], "cyclic" (rock–paper–scissors, ignores rewards).
    """
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    v.choice("model", model, EXPERT_MODELS)
    return label_noise(EXPERT_MODELS[model](problem), noise)


def covered_pair_probs(problem: TabularProblem, shown) -> np.ndarray:
    """Partial coverage: q uniform over the shown pairs; shown is a bool (n, n) or (m, n, n) mask, symmetrised.

    Returns q (m, n, n) for `sampler=`; pairs outside the mask are never presented (SPEC §3).
    """
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    m, n = problem.n_contexts, problem.n_actions
    mask = np.asarray(shown)
    if mask.dtype != bool:
        raise TypeError(f"shown must be a boolean mask, got dtype {mask.dtype}")
    if mask.shape == (n, n):
        mask = np.broadcast_to(mask, (m, n, n))
    if mask.shape != (m, n, n):
        raise ValueError(f"shown must have shape ({n}, {n}) or ({m}, {n}, {n}), got {mask.shape}")
    mask = (mask | mask.transpose(0, 2, 1)) & ~np.eye(n, dtype=bool)
    per_context = mask.sum(axis=(1, 2))
    if np.any(per_context == 0):
        raise ValueError(f"shown must include at least one pair in every context; context(s) "
                         f"{np.flatnonzero(per_context == 0)[:5].tolist()} have none")
    return mask / per_context[:, None, None]


def pairs_mask(n_actions: int, pairs) -> np.ndarray:
    """Boolean (n, n) mask of the listed unordered pairs [(i, j), ...], for covered_pair_probs."""
    n = v.positive_int("n_actions", n_actions, minimum=2)
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pairs must be a non-empty list of integer (i, j) pairs, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= n or np.any(arr[:, 0] == arr[:, 1]):
        raise ValueError(f"pairs must hold distinct actions in [0, {n})")
    mask = np.zeros((n, n), dtype=bool)
    mask[arr[:, 0], arr[:, 1]] = True
    return mask | mask.T


# --------------------------------------------------------------------------- IPO toy data sets (SPEC §9)

# Azar et al. 2023, §5: one context, actions (a, b, c) = (0, 1, 2), uniform π_ref, each listed
# comparison (chosen, rejected) present once. The papers give no rewards; the presets carry ones
# consistent with the labels where there are any: D1 a > b > c as (1, 0, −1); D2 (a cycle) and D3
# (a ≻ b and b ≻ a, c unseen) have none, so zeros.
IPO_TOY_DATASETS = {
    "D1": (((0, 1), (1, 2), (0, 2)), (1.0, 0.0, -1.0)),    # total order a ≻ b ≻ c
    "D2": (((0, 1), (1, 2), (2, 0)), (0.0, 0.0, 0.0)),     # cycle a ≻ b ≻ c ≻ a
    "D3": (((0, 1), (1, 0)), (0.0, 0.0, 0.0)),             # a ≻ b and b ≻ a; c never shown
}


def ipo_toy_dataset(name: str):
    """(problem, data) of the IPO paper's toy set "D1" | "D2" | "D3": one context, 3 actions, uniform π_ref."""
    v.choice("name", name, IPO_TOY_DATASETS)
    pairs, rewards = IPO_TOY_DATASETS[name]
    pairs = np.asarray(pairs, dtype=np.int64)
    problem = TabularProblem(np.asarray([rewards]))
    data = PairData(np.zeros(len(pairs), dtype=np.int64), pairs[:, 0], pairs[:, 1], 1, 3)
    return problem, data
