"""Choice events: the common form of best-of-n and ranked objectives, on the population or on data.

A choice event is a shown set S (in a context x) with a mass M_i on each member i winning. The
best-of-n objective is Σ_events Σ_{i∈S} M_i ℓ_S(i), ℓ_S(i) = −(1/α)(α z_i − logsumexp_S α z); a
ranking of k is the k − 1 choice events "best of the remaining suffix" (SPEC §4). Events are grouped
by set size: each group holds ctx (E,), sets (E, j) and mass (E, j).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import comb, softmax

from . import _validation as v
from .preferences import BestOfNData, PairData, RankedData
from .problems import TabularProblem

MAX_SETS = 10**6   # population enumeration limit: shown sets per context


@dataclass(frozen=True, eq=False)
class ChoiceEvents:
    """Choice events grouped by set size: groups = ((ctx (E,), sets (E, j), mass (E, j)), ...)."""

    groups: tuple
    n_contexts: int
    n_actions: int
    population: bool = False   # True: every member of a shown set wins with positive probability

    def wins(self) -> np.ndarray:
        """ω[x, i] = Σ of the mass of i winning, shape (n_contexts, n_actions)."""
        m, n = self.n_contexts, self.n_actions
        out = np.zeros(m * n)
        for ctx, sets, mass in self.groups:
            np.add.at(out, (ctx[:, None] * n + sets).ravel(), mass.ravel())
        return out.reshape(m, n)

    def context_mass(self) -> np.ndarray:
        """Σ of the event mass per context, shape (n_contexts,)."""
        out = np.zeros(self.n_contexts)
        for ctx, _, mass in self.groups:
            np.add.at(out, ctx, mass.sum(axis=1))
        return out

    def pair_surrogate(self) -> np.ndarray:
        """W̃[x, i, j] = Σ over events showing i and j of the mass of i winning, shape (m, n, n).

        Under Luce choice W̃_ij / W̃_ji = exp(r_i − r_j) for every event, so this is a consistent
        Bradley–Terry pair mass: the log-odds start of the Newton solver is exact on it.
        """
        m, n = self.n_contexts, self.n_actions
        out = np.zeros(m * n * n)
        for ctx, sets, mass in self.groups:
            j = sets.shape[1]
            a, b = np.nonzero(~np.eye(j, dtype=bool))
            flat = (ctx[:, None] * n + sets[:, a]) * n + sets[:, b]
            np.add.at(out, flat.ravel(), np.broadcast_to(mass[:, a], flat.shape).ravel())
        return out.reshape(m, n, n)

    def beats(self) -> np.ndarray:
        """beats[x, i, j]: i won an event in which j was shown, shape (m, n, n) bool (Hunter 2004's graph).

        On the population every shown member wins with positive probability (Luce), even where exp
        underflows, so the co-occurrence support is used there.
        """
        m, n = self.n_contexts, self.n_actions
        out = np.zeros(m * n * n, dtype=bool)
        for ctx, sets, mass in self.groups:
            j = sets.shape[1]
            a, b = np.nonzero(~np.eye(j, dtype=bool))
            flat = (ctx[:, None] * n + sets[:, a]) * n + sets[:, b]
            won = np.ones(flat.shape, dtype=bool) if self.population else mass[:, a] > 0
            out[flat[won]] = True
        return out.reshape(m, n, n)


def _combinations(n: int, j: int) -> np.ndarray:
    """All j-subsets of range(n) in lexicographic order, shape (C(n, j), j), int64."""
    count = math.comb(n, j)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), j)),
                       dtype=np.int64, count=count * j)
    return flat.reshape(count, j)


def _colex_rank(sets: np.ndarray) -> np.ndarray:
    """Rank of each sorted subset in colexicographic order, Σ_t C(c_t, t+1) (combinatorial number system)."""
    t = np.arange(1, sets.shape[1] + 1)
    return comb(sets, t, exact=False).round().astype(np.int64).sum(axis=1)


def n_population_sets(n_actions: int, k: int, *, ranked: bool) -> int:
    """Shown sets per context the population objective enumerates: C(n, k), or Σ_{j=2..k} C(n, j) if ranked."""
    sizes = range(2, k + 1) if ranked else (k,)
    return sum(math.comb(n_actions, j) for j in sizes)


def population_events(problem: TabularProblem, k: int, *, ranked: bool, weights=None) -> ChoiceEvents:
    """Events of the population best-of-k (ranked=False) or ranked-k objective: shown k-sets uniform, Luce winners.

    Mass of a k-set S in context x: ρ_x μ_x(S) / C(n, k) (μ = `weights`, shape (m, C(n, k)) over the
    k-subsets in lexicographic order, default 1). A ranking reaches the remaining set R ⊂ S with
    probability f(R) = Σ_{a∉R} f(R ∪ {a}) · Luce(a | R ∪ {a}) (Plackett–Luce removes the winner), a
    recursion over set sizes k, k−1, ..., 2; the event at R has winner mass f(R) · Luce(· | R).
    """
    m, n = problem.n_contexts, problem.n_actions
    k = v.positive_int("k", k, minimum=2)
    if k > n:
        raise ValueError(f"k must be at most n_actions = {n}, got {k}")
    total = n_population_sets(n, k, ranked=ranked)
    if total > MAX_SETS:
        raise ValueError(f"the population objective with n_actions={n}, k={k} has {total} shown sets per "
                         f"context (> {MAX_SETS}); pass sampled data instead (data=...)")
    r = problem.rewards
    sets = _combinations(n, k)
    f = np.broadcast_to(problem.context_probs[:, None] / sets.shape[0], (m, sets.shape[0])).copy()
    if weights is not None:
        mu = v.float_array("weights", weights, shape=(m, sets.shape[0]))
        if np.any(mu < 0):
            raise ValueError("weights must be non-negative")
        f *= mu
    groups = []
    for j in range(k, 1, -1):
        luce = softmax(r[:, sets], axis=-1)                       # (m, S_j, j): Luce(i | S)
        mass = f[:, :, None] * luce
        groups.append((np.repeat(np.arange(m), sets.shape[0]), np.tile(sets, (m, 1)), mass.reshape(-1, j)))
        if not ranked or j == 2:
            break
        # Remove each possible winner a: the remaining (j−1)-set, located by its colex rank.
        smaller = _combinations(n, j - 1)
        position = np.empty(smaller.shape[0], dtype=np.int64)
        position[_colex_rank(smaller)] = np.arange(smaller.shape[0])
        f_next = np.zeros((m, smaller.shape[0]))
        for a in range(j):
            rest = np.delete(sets, a, axis=1)
            idx = position[_colex_rank(rest)]
            np.add.at(f_next, (slice(None), idx), mass[:, :, a])
        sets, f = smaller, f_next
    return ChoiceEvents(tuple(groups), m, n, population=True)


def _sample_weights(data, weights) -> np.ndarray:
    """Per-sample weights normalised to sum to 1 (a weighted empirical distribution); default 1/N."""
    N = len(data)
    if weights is None:
        return np.full(N, 1.0 / N)
    mu = v.float_array("weights", weights, shape=(N,))
    if np.any(mu < 0):
        raise ValueError("weights must be non-negative")
    if not mu.sum() > 0:
        raise ValueError("weights must not all be zero")
    # Normalising by Σμ (not N) makes a duplicated sample exactly equal to weight 2.
    return mu / mu.sum()


def data_events(data, weights=None) -> ChoiceEvents:
    """Events of sampled BestOfNData (one per sample) or RankedData (k − 1 per sample: best of each suffix)."""
    w = _sample_weights(data, weights)
    if isinstance(data, BestOfNData):
        mass = np.zeros(data.shown.shape)
        mass[np.arange(len(data)), data.best] = w
        groups = ((data.ctx, data.shown, mass),)
    elif isinstance(data, RankedData):
        groups = []
        for t in range(data.k - 1):
            mass = np.zeros((len(data), data.k - t))
            mass[:, 0] = w
            groups.append((data.ctx, data.ranking[:, t:], mass))
        groups = tuple(groups)
    else:
        raise TypeError(f"data must be a BestOfNData or RankedData, got {type(data).__name__}")
    return ChoiceEvents(groups, data.n_contexts, data.n_actions, population=False)


def pair_weights_from_samples(data: PairData, weights) -> np.ndarray:
    """Per-sample weights (N,) as a pair weight μ̄ (m, n, n) with W ⊙ μ̄ = Σ_s μ_s 1[cell] / Σ_s μ_s."""
    w = _sample_weights(data, weights)
    m, n = data.n_contexts, data.n_actions
    flat = (data.ctx * n + data.chosen) * n + data.rejected
    weighted = np.bincount(flat, weights=w, minlength=m * n * n).reshape(m, n, n)
    W = data.pair_mass()
    return np.divide(weighted, W, out=np.zeros_like(W), where=W > 0)
