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
from .objectives import pair_sigmoid
from .problems import TabularProblem

SAMPLERS = ("uniform", "ref")


def _check_problem(problem):
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")


# --------------------------------------------------------------------------- expert models

def bradley_terry(rewards: np.ndarray) -> np.ndarray:
    """P[x, i, j] = σ(r_xi − r_xj), shape (n_contexts, n_actions, n_actions); diagonal ½."""
    return _bradley_terry(rewards)


def _bradley_terry(rewards, out: np.ndarray | None = None) -> np.ndarray:
    """bradley_terry, written into `out` (a float64 (m, n, n) array) when given."""
    r = torch.from_numpy(v.float_array("rewards", rewards, ndim=2))   # (m, n), a checked copy
    o = None if out is None else torch.from_numpy(out)
    return pair_sigmoid(r, out=o).numpy()     # e_i / (e_i + e_j): 12.6x scipy's expit at (256, 64, 64)


def preference_matrix(problem: TabularProblem, preference=None) -> np.ndarray:
    """The expert's P (m, n, n): Bradley–Terry on the rewards when `preference` is None, else the checked array."""
    return _preference_matrix(problem, preference)


def _preference_matrix(problem: TabularProblem, preference=None, out: np.ndarray | None = None,
                       rows: slice = slice(None)) -> np.ndarray:
    """preference_matrix for the contexts `rows`, the Bradley–Terry table written into `out` when given."""
    _check_problem(problem)
    if preference is None:
        return _bradley_terry(problem.rewards[rows], out)
    m, n = problem.n_contexts, problem.n_actions
    P = v.float_array("preference", preference, shape=(m, n, n))[rows]
    if np.any((P < 0) | (P > 1)):
        raise ValueError("preference entries must be probabilities in [0, 1]")
    off = np.max(np.abs(P + P.transpose(0, 2, 1) - 1.0))
    if off > 1e-9:
        raise ValueError(f"preference must satisfy P + Pᵀ = 1 (within 1e-9); off by up to {off:.3g}")
    return P


# --------------------------------------------------------------------------- pair distributions

def _zero_diagonal(a: np.ndarray) -> np.ndarray:
    """a[:, i, i] = 0 in place for an (m, n, n) array, through a strided view (a fancy-index write of
    the diagonal took 0.3 ms at (256, 64))."""
    n = a.shape[1]
    if a.flags.c_contiguous:
        a.reshape(a.shape[0], n * n)[:, :: n + 1] = 0.0
    else:
        a[:, np.arange(n), np.arange(n)] = 0.0
    return a


def pair_probs(problem: TabularProblem, sampler="uniform") -> np.ndarray:
    """q[x, i, j]: probability that the ordered pair (i, j), i ≠ j, is shown; shape (m, n, n), rows sum to 1."""
    return _pair_probs(problem, sampler)


def _pair_probs(problem: TabularProblem, sampler="uniform", rows: slice = slice(None)) -> np.ndarray:
    """pair_probs for the contexts `rows` (a named sampler computes only those)."""
    _check_problem(problem)
    m, n = problem.n_contexts, problem.n_actions
    if not isinstance(sampler, str) and np.ndim(sampler) != 3:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} or a pair-probability array of shape "
                         f"(n_contexts, n_actions, n_actions) = {(m, n, n)}, got {type(sampler).__name__}")
    if isinstance(sampler, str):
        v.choice("sampler", sampler, SAMPLERS)
        if sampler == "uniform":
            q = np.full((len(range(m)[rows]), n, n), 1.0 / (n * (n - 1)))
        else:  # "ref": i, j drawn independently from π_ref, conditioned on i ≠ j
            p = problem.ref_policy[rows]
            q = p[:, :, None] * p[:, None, :] / (1.0 - np.sum(p * p, axis=1))[:, None, None]
        return _zero_diagonal(q)
    q = v.float_array("sampler", sampler, shape=(m, n, n))
    if np.any(q < 0):
        raise ValueError("sampler (pair-probability array) must be non-negative")
    if np.any(np.diagonal(q, axis1=1, axis2=2) != 0):
        raise ValueError("sampler (pair-probability array) must have a zero diagonal: pairs are of distinct actions")
    off = np.max(np.abs(q.sum(axis=(1, 2)) - 1.0))
    if off > 1e-9:
        raise ValueError(f"sampler (pair-probability array) must sum to 1 in each context; off by up to {off:.3g}")
    return q[rows]


def pair_mass(problem: TabularProblem, *, sampler="uniform", preference=None) -> np.ndarray:
    """Population W[x, i, j] = ρ_x (q_ij + q_ji) P_ij, shape (n_contexts, n_actions, n_actions), Σ W = 1."""
    return _pair_mass(problem, sampler, preference)


def _pair_mass(problem: TabularProblem, sampler="uniform", preference=None, out: np.ndarray | None = None,
               rows: slice = slice(None)):
    """pair_mass for the contexts `rows` (every context by default), written into `out` (a float64
    array of that shape, e.g. a solver's reused buffer) when given."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    P = _preference_matrix(problem, preference, out=out, rows=rows)
    rho = problem.context_probs[rows]
    if isinstance(sampler, str) and v.choice("sampler", sampler, SAMPLERS) == "uniform":
        n = problem.n_actions
        scale = (rho * (2.0 / (n * (n - 1))))[:, None, None]
        # Bradley–Terry's P is a fresh array (or `out`): scaled in place (a grid-sized copy fewer),
        # by torch (at its threads: numpy's multiply is one thread)
        W = P if preference is None else (np.empty_like(P) if out is None else out)
        torch.mul(torch.from_numpy(P), torch.from_numpy(scale), out=torch.from_numpy(W))
        return _zero_diagonal(W)
    q = _pair_probs(problem, sampler, rows)
    return np.multiply(rho[:, None, None] * (q + q.transpose(0, 2, 1)), P, out=out)


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


def _sample_contexts(rng, context_probs: np.ndarray, size: int) -> np.ndarray:
    """x ~ ρ for `size` samples (uniform integers when ρ is uniform), int64."""
    m = context_probs.shape[0]
    if np.all(context_probs == context_probs[0]):
        return rng.integers(0, m, size=size)
    cdf = np.cumsum(context_probs)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), m - 1)


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


# --------------------------------------------------------------------------- multi-response data (SPEC §2–§3)
# Luce choice of the best of k shown actions and Plackett–Luce rankings, both by the Gumbel-max trick:
# argmax / argsort of r + Gumbel noise is an exact Luce draw / Plackett–Luce ranking.

MULTI_SAMPLERS = ("uniform", "ref")


def _distinct_rows(name: str, value, n_actions: int, n_rows: int) -> np.ndarray:
    """(N, k) int64 actions in [0, n_actions), k >= 2, distinct within each row; else raise naming `name`."""
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-d integer array of shape (N, k) with k >= 2, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows (one per sample), got {arr.shape[0]}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_actions):
        raise ValueError(f"{name} entries must lie in [0, {n_actions}), got range [{arr.min()}, {arr.max()}]")
    if np.any(_has_repeat(arr, n_actions)):
        raise ValueError(f"{name} must hold distinct actions within each row")
    return arr.astype(np.int64, copy=False)


def _has_repeat(rows: np.ndarray, n_actions: int) -> np.ndarray:
    """(N,) bool: row i of `rows` (N, k), actions in [0, n_actions), holds some action twice.

    Up to 64 actions each action is one bit of a uint64 and a row is scanned column by column
    (repeat where the bit is already set), in blocks that stay in cache: ~3.5x faster than sorting
    the rows. Beyond 64 actions the rows are sorted and neighbours compared.
    """
    if n_actions > 64:
        ordered = np.sort(rows, axis=1)
        return (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    out = np.empty(rows.shape[0], dtype=bool)
    for start in range(0, rows.shape[0], _CHUNK):
        bits = np.left_shift(np.uint64(1), np.ascontiguousarray(rows[start:start + _CHUNK].T, dtype=np.uint64))
        seen, repeat = bits[0].copy(), out[start:start + _CHUNK]
        repeat[:] = False
        for b in bits[1:]:
            repeat |= (seen & b) != 0
            seen |= b
    return out


@dataclass(frozen=True, eq=False)
class BestOfNData:
    """N best-of-k samples: ctx (N,), shown (N, k) distinct actions, best (N,) the column of `shown` that won."""

    ctx: np.ndarray       # (N,) context index
    shown: np.ndarray     # (N, k) the k actions shown, in presentation order
    best: np.ndarray      # (N,) index into shown's columns of the chosen (best) action
    n_contexts: int
    n_actions: int

    def __post_init__(self):
        m = v.positive_int("n_contexts", self.n_contexts)
        n = v.positive_int("n_actions", self.n_actions, minimum=2)
        ctx = v.index_array("ctx", self.ctx, m)
        if ctx.shape[0] == 0:
            raise ValueError("data must hold at least one sample (ctx is empty)")
        shown = _distinct_rows("shown", self.shown, n, ctx.shape[0])
        best = v.index_array("best", self.best, shown.shape[1])
        if best.shape != ctx.shape:
            raise ValueError(f"best must have length {ctx.shape[0]}, got {best.shape[0]}")
        for name, arr in (("ctx", ctx), ("shown", shown), ("best", best)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.ctx.shape[0])

    @property
    def k(self) -> int:
        """Number of actions shown per sample."""
        return int(self.shown.shape[1])

    @property
    def best_action(self) -> np.ndarray:
        """(N,) the winning action itself (not its column)."""
        return self.shown[np.arange(len(self)), self.best]


@dataclass(frozen=True, eq=False)
class RankedData:
    """N rankings: ctx (N,), ranking (N, k) distinct actions in rank order, best first."""

    ctx: np.ndarray       # (N,) context index
    ranking: np.ndarray   # (N, k) actions, ranking[:, 0] the best
    n_contexts: int
    n_actions: int

    def __post_init__(self):
        m = v.positive_int("n_contexts", self.n_contexts)
        n = v.positive_int("n_actions", self.n_actions, minimum=2)
        ctx = v.index_array("ctx", self.ctx, m)
        if ctx.shape[0] == 0:
            raise ValueError("data must hold at least one sample (ctx is empty)")
        ranking = _distinct_rows("ranking", self.ranking, n, ctx.shape[0])
        for name, arr in (("ctx", ctx), ("ranking", ranking)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.ctx.shape[0])

    @property
    def k(self) -> int:
        """Number of actions ranked per sample."""
        return int(self.ranking.shape[1])


def _shown_rewards(problem: TabularProblem, ctx: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """r[ctx_i, shown_ij], shape (N, k): one flat `take` (faster than a 2-d fancy index)."""
    return np.take(problem.rewards.ravel(), ctx[:, None] * problem.n_actions + shown)


def _luce_keys(rng, problem: TabularProblem, ctx: np.ndarray, shown: np.ndarray):
    """Yield (rows, r[ctx, shown] + Gumbel noise) over blocks of _CHUNK samples, in order.

    The same draws as one (N, k) pass (the generator fills in order), but every temporary stays in
    cache: a pass over 2·10⁶ samples made six fresh 128 MB arrays, and whether glibc handed them
    back to the kernel between calls decided the speed (best-of-8: 2.9e6 or 5.5e6 samples/s).
    """
    N, k = shown.shape
    for start in range(0, N, _CHUNK):
        rows = slice(start, min(N, start + _CHUNK))
        keys = _shown_rewards(problem, ctx[rows], shown[rows])
        keys += _gumbel(rng, keys.shape)
        yield rows, keys


def _gumbel(rng, shape) -> np.ndarray:
    # Gumbel(0, 1) = −log E with E ~ Exp(1): one logarithm (numpy's ziggurat draws E without one),
    # where −log(−log U) takes two; E > 0 always, so no log(0).
    return -np.log(rng.standard_exponential(shape))


def _sample_shown_sets(rng, problem: TabularProblem, ctx: np.ndarray, k: int, sampler) -> np.ndarray:
    """(N, k) distinct actions per sample, in a random presentation order.

    "uniform": a uniformly random k-subset in uniformly random order. When k² ≤ n, k independent
    uniform draws are kept if distinct and the rows with a repeat are redrawn (accepted with
    probability ≥ e^{−1/2}; conditioning i.i.d. draws on distinctness is exactly uniform over ordered
    k-subsets); otherwise the skip method (the t-th draw is uniform on the n − t unused actions),
    O(N k²). "ref": successive sampling without replacement ∝ π_ref (Gumbel top-k on log π_ref).
    """
    N, n = ctx.shape[0], problem.n_actions
    v.choice("sampler", sampler, MULTI_SAMPLERS)
    if sampler == "ref":
        keys = problem.log_ref[ctx] + _gumbel(rng, (N, n))
        return np.argsort(-keys, axis=1, kind="stable")[:, :k]
    if k * k <= n:
        shown = np.empty((N, k), dtype=np.int64)
        for start in range(0, N, _CHUNK):     # blocks that stay in cache
            block = rng.integers(0, n, size=(min(N, start + _CHUNK) - start, k))
            todo = np.arange(block.shape[0])
            while todo.size:                  # a handful of rounds: each keeps >= 60% of the rows
                todo = todo[_has_repeat(block[todo], n)]
                block[todo] = rng.integers(0, n, size=(todo.size, k))
            shown[start:start + block.shape[0]] = block
        return shown
    shown = np.empty((N, k), dtype=np.int64)
    for t in range(k):                        # a loop over the k positions, not over samples
        x = rng.integers(0, n - t, size=N)
        # The x-th unused action: step over the used ones in increasing order.
        for used in np.sort(shown[:, :t], axis=1).T:
            x += x >= used
        shown[:, t] = x
    return shown


def _check_multi_args(problem, n_samples, k):
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    N = v.positive_int("n_samples", n_samples)
    k = v.positive_int("k", k, minimum=2)
    if k > problem.n_actions:
        raise ValueError(f"k must be at most n_actions = {problem.n_actions}, got {k}")
    return N, k


def sample_best_of_n(problem: TabularProblem, n_samples: int, k: int, *, seed, sampler="uniform") -> BestOfNData:
    """Draw n_samples best-of-k samples: x ~ ρ, k actions shown, the best by Luce P(i|S) = e^{r_i}/Σ_S e^{r}."""
    N, k = _check_multi_args(problem, n_samples, k)
    rng = v.rng_from(seed)
    ctx = _sample_contexts(rng, problem.context_probs, N)
    shown = _sample_shown_sets(rng, problem, ctx, k, sampler)
    best = np.empty(N, dtype=np.int64)
    for rows, keys in _luce_keys(rng, problem, ctx, shown):
        best[rows] = np.argmax(keys, axis=1)                                            # Gumbel-max
    return BestOfNData(ctx, shown, best, problem.n_contexts, problem.n_actions)


def sample_rankings(problem: TabularProblem, n_samples: int, k: int, *, seed, sampler="uniform") -> RankedData:
    """Draw n_samples Plackett–Luce rankings of k shown actions: argsort of r + Gumbel noise, best first."""
    N, k = _check_multi_args(problem, n_samples, k)
    rng = v.rng_from(seed)
    ctx = _sample_contexts(rng, problem.context_probs, N)
    shown = _sample_shown_sets(rng, problem, ctx, k, sampler)
    for rows, keys in _luce_keys(rng, problem, ctx, shown):     # each block reordered in place
        np.negative(keys, out=keys)
        shown[rows] = np.take_along_axis(shown[rows], np.argsort(keys, axis=1, kind="stable"), axis=1)
    return RankedData(ctx, shown, problem.n_contexts, problem.n_actions)


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
