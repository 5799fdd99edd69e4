"""Enumerable sequence problems: the V^L responses of length L over V tokens, one prompt per context.

Action index a ↔ sequence y in lexicographic order (a = Σ_t y_t V^(L-t)), so a small task is a
TabularProblem and every tabular tool applies (SPEC §8). Structured rewards (per-position terms plus
pairwise interactions) score sequences without a table, for spaces too large to enumerate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _validation as v
from ..problems import TabularProblem

ENUM_LIMIT = 2 ** 16     # exact evaluation enumerates every sequence while V^L ≤ this (issue 6, item 4)
TABLE_LIMIT = 2 ** 22    # largest reward table StructuredRewards.table() builds
REF_KINDS = ("uniform", "dirichlet")


def enumerate_sequences(vocab_size: int, seq_len: int) -> np.ndarray:
    """All V^L sequences in lexicographic order (row a is the base-V digits of a), int64 (V^L, L)."""
    V = v.positive_int("vocab_size", vocab_size, minimum=2)
    L = v.positive_int("seq_len", seq_len)
    if V ** L > TABLE_LIMIT:
        raise ValueError(f"vocab_size**seq_len = {V ** L} sequences is too many to enumerate (limit {TABLE_LIMIT})")
    a = np.arange(V ** L, dtype=np.int64)
    return (a[:, None] // V ** np.arange(L - 1, -1, -1, dtype=np.int64)) % V


def sequence_index(seqs, vocab_size: int) -> np.ndarray:
    """Lexicographic index Σ_t y_t V^(L-1-t) of each row of seqs (N, L), int64 (N,)."""
    V = v.positive_int("vocab_size", vocab_size, minimum=2)
    seqs = np.asarray(seqs)
    if seqs.ndim != 2 or not np.issubdtype(seqs.dtype, np.integer):
        raise ValueError(f"seqs must be a 2-d integer array (N, L), got shape {seqs.shape} and dtype {seqs.dtype}")
    if seqs.size and (seqs.min() < 0 or seqs.max() >= V):
        raise ValueError(f"seqs entries must lie in [0, {V})")
    return seqs.astype(np.int64) @ (V ** np.arange(seqs.shape[1] - 1, -1, -1, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class StructuredRewards:
    """r(x, y) = Σ_t unary[x, t, y_t] + Σ_{s<t} pairwise[x, s, t, y_s, y_t] (entries with s ≥ t are ignored)."""

    unary: np.ndarray      # (n_contexts, seq_len, vocab_size) per-position terms
    pairwise: np.ndarray   # (n_contexts, seq_len, seq_len, vocab_size, vocab_size) interactions

    def __post_init__(self):
        u = v.float_array("unary", self.unary, ndim=3)
        m, L, V = u.shape
        if m < 1 or L < 1 or V < 2:
            raise ValueError(f"unary must have shape (n_contexts ≥ 1, seq_len ≥ 1, vocab_size ≥ 2), "
                             f"got {u.shape}")
        w = v.float_array("pairwise", self.pairwise, shape=(m, L, L, V, V))
        w[:, ~np.triu(np.ones((L, L), dtype=bool), k=1)] = 0.0     # only s < t interacts
        for name, arr in (("unary", u), ("pairwise", w)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    n_contexts = property(lambda self: self.unary.shape[0])
    seq_len = property(lambda self: self.unary.shape[1])
    vocab_size = property(lambda self: self.unary.shape[2])

    def __call__(self, ctx, seqs) -> np.ndarray:
        """Rewards r(ctx_k, seqs_k), float64 (N,), for ctx (N,) and seqs (N, L)."""
        ctx = v.index_array("ctx", ctx, self.n_contexts)
        seqs = np.asarray(seqs)
        if seqs.shape != (ctx.shape[0], self.seq_len):
            raise ValueError(f"seqs must have shape ({ctx.shape[0]}, {self.seq_len}), got {seqs.shape}")
        t = np.arange(self.seq_len)
        s_idx, t_idx = np.triu_indices(self.seq_len, k=1)
        c = ctx[:, None]
        return (self.unary[c, t, seqs].sum(axis=1)
                + self.pairwise[c, s_idx, t_idx, seqs[:, s_idx], seqs[:, t_idx]].sum(axis=1))

    def table(self) -> np.ndarray:
        """The reward table r[x, a] over all V^L sequences in lexicographic order, (n_contexts, V^L)."""
        seqs = enumerate_sequences(self.vocab_size, self.seq_len)
        n = seqs.shape[0]
        return np.stack([self(np.full(n, x), seqs) for x in range(self.n_contexts)])


def make_structured_rewards(n_contexts: int, vocab_size: int, seq_len: int, *, seed,
                            reward_scale: float = 1.0, pair_scale: float = 0.5) -> StructuredRewards:
    """Random structured rewards: unary ~ reward_scale·N(0,1), pairwise (s < t) ~ pair_scale·N(0,1)."""
    m = v.positive_int("n_contexts", n_contexts)
    V = v.positive_int("vocab_size", vocab_size, minimum=2)
    L = v.positive_int("seq_len", seq_len)
    a = v.nonnegative_float("reward_scale", reward_scale)
    b = v.nonnegative_float("pair_scale", pair_scale)
    rng = v.rng_from(seed)
    return StructuredRewards(a * rng.standard_normal((m, L, V)), b * rng.standard_normal((m, L, L, V, V)))


@dataclass(frozen=True, eq=False)
class SequenceTask:
    """A preference task over sequences: rewards r(x, y), context probabilities ρ, optional tabular π_ref."""

    vocab_size: int
    seq_len: int
    n_contexts: int
    rewards: object                    # callable (ctx (N,), seqs (N, L)) -> rewards (N,) float64
    context_probs: np.ndarray = None   # (n_contexts,); default uniform
    ref_policy: np.ndarray = None      # (n_contexts, V^L) tabular π_ref to fit the reference model to, or None

    def __post_init__(self):
        V = v.positive_int("vocab_size", self.vocab_size, minimum=2)
        L = v.positive_int("seq_len", self.seq_len)
        m = v.positive_int("n_contexts", self.n_contexts)
        if not callable(self.rewards):
            raise TypeError(f"rewards must be callable (ctx, seqs) -> (N,), got {type(self.rewards).__name__}")
        rho = np.full(m, 1.0 / m) if self.context_probs is None else v.float_array(
            "context_probs", self.context_probs, shape=(m,))
        v.probability_rows("context_probs", rho)
        rho.setflags(write=False)
        object.__setattr__(self, "context_probs", rho)
        if self.ref_policy is not None:
            ref = v.float_array("ref_policy", self.ref_policy, shape=(m, V ** L))
            v.probability_rows("ref_policy", ref)
            ref.setflags(write=False)
            object.__setattr__(self, "ref_policy", ref)

    @property
    def n_sequences(self) -> int:
        """V^L, the number of possible responses per context."""
        return self.vocab_size ** self.seq_len

    @property
    def enumerable(self) -> bool:
        """True while V^L ≤ ENUM_LIMIT: exact evaluation by enumeration applies."""
        return self.n_sequences <= ENUM_LIMIT

    def reward_table(self) -> np.ndarray:
        """r[x, a] for every context and every sequence in lexicographic order, (n_contexts, V^L)."""
        seqs = enumerate_sequences(self.vocab_size, self.seq_len)
        n = seqs.shape[0]
        return np.stack([np.asarray(self.rewards(np.full(n, x), seqs), dtype=np.float64)
                         for x in range(self.n_contexts)])

    def problem(self, ref_policy=None) -> TabularProblem:
        """The tabulated problem (rewards (m, V^L), π_ref, ρ); a given ref_policy (e.g. enumerated) replaces π_ref."""
        if not self.enumerable:
            raise ValueError(f"the task has V^L = {self.n_sequences} sequences, more than ENUM_LIMIT = {ENUM_LIMIT}; "
                             "it cannot be tabulated")
        ref = self.ref_policy if ref_policy is None else ref_policy
        return TabularProblem(self.reward_table(), ref, self.context_probs)


def task_from_problem(problem: TabularProblem, vocab_size: int, seq_len: int) -> SequenceTask:
    """The sequence task whose action a is the a-th sequence in lexicographic order; needs n_actions = V^L."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    V = v.positive_int("vocab_size", vocab_size, minimum=2)
    L = v.positive_int("seq_len", seq_len)
    if problem.n_actions != V ** L:
        raise ValueError(f"problem has n_actions = {problem.n_actions}, but vocab_size**seq_len = {V ** L}")
    table = problem.rewards

    def rewards(ctx, seqs):
        return table[np.asarray(ctx), sequence_index(seqs, V)]

    return SequenceTask(V, L, problem.n_contexts, rewards, problem.context_probs, problem.ref_policy)


def structured_task(rewards: StructuredRewards, *, context_probs=None, ref_policy=None) -> SequenceTask:
    """The sequence task scored by structured rewards (any size; tabular tools only while V^L ≤ ENUM_LIMIT)."""
    if not isinstance(rewards, StructuredRewards):
        raise TypeError(f"rewards must be a StructuredRewards, got {type(rewards).__name__}")
    return SequenceTask(rewards.vocab_size, rewards.seq_len, rewards.n_contexts, rewards, context_probs, ref_policy)


@dataclass(frozen=True)
class TaskConfig:
    """The sequence problem of `spo-tabular transformer`: structured rewards over V^L responses."""

    vocab_size: int = 4          # V, response tokens
    seq_len: int = 3             # L, response length (V^L = 64 sequences by default)
    n_contexts: int = 1          # m, prompts
    reward_scale: float = 1.0    # per-position reward terms ~ reward_scale·N(0, 1)
    pair_scale: float = 0.5      # pairwise interactions ~ pair_scale·N(0, 1)
    ref: str = "uniform"         # tabular π_ref the reference model is fitted to: uniform | dirichlet (enumerable)
    problem_seed: int = 0        # seed of the rewards (and of a Dirichlet π_ref)

    def __post_init__(self):
        v.positive_int("vocab_size", self.vocab_size, minimum=2)
        v.positive_int("seq_len", self.seq_len)
        v.positive_int("n_contexts", self.n_contexts)
        v.nonnegative_float("reward_scale", self.reward_scale)
        v.nonnegative_float("pair_scale", self.pair_scale)
        v.choice("ref", self.ref, REF_KINDS)
        v.positive_int("problem_seed", self.problem_seed, minimum=0)


def build_task(cfg: TaskConfig) -> SequenceTask:
    """The SequenceTask described by cfg; a Dirichlet(2) π_ref needs an enumerable task."""
    rng = np.random.default_rng(cfg.problem_seed)
    rewards = make_structured_rewards(cfg.n_contexts, cfg.vocab_size, cfg.seq_len, seed=rng,
                                      reward_scale=cfg.reward_scale, pair_scale=cfg.pair_scale)
    ref_policy = None
    n = cfg.vocab_size ** cfg.seq_len
    if cfg.ref == "dirichlet":
        if n > ENUM_LIMIT:
            raise ValueError(f"ref='dirichlet' needs an enumerable task (V^L ≤ {ENUM_LIMIT}), got V^L = {n}")
        ref_policy = rng.dirichlet(np.full(n, 2.0), size=cfg.n_contexts)
        ref_policy /= ref_policy.sum(axis=1, keepdims=True)
    elif n <= ENUM_LIMIT:
        ref_policy = np.full((cfg.n_contexts, n), 1.0 / n)
    return structured_task(rewards, ref_policy=ref_policy)
