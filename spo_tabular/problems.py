"""Finite context/action problems: expert rewards, reference policy, context distribution.

SPEC §1. Everything is float64; a policy is stored as logits and normalised with log_softmax.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from . import _validation as v

REF_KINDS = ("uniform", "dirichlet")


@dataclass(frozen=True, eq=False)
class TabularProblem:
    """Expert rewards r (m, n), reference policy π_ref (m, n) and context probabilities ρ (m,)."""

    rewards: np.ndarray          # (n_contexts, n_actions) expert rewards, finite
    ref_policy: np.ndarray = None     # (n_contexts, n_actions) rows > 0 summing to 1; default uniform
    context_probs: np.ndarray = None  # (n_contexts,) > 0 summing to 1; default uniform

    def __post_init__(self):
        rewards = v.float_array("rewards", self.rewards, ndim=2)
        m, n = rewards.shape
        if m < 1:
            raise ValueError("rewards must have at least one context (row)")
        if n < 2:
            raise ValueError(f"rewards must have at least 2 actions (columns), got {n}")
        ref = np.full((m, n), 1.0 / n) if self.ref_policy is None else v.float_array(
            "ref_policy", self.ref_policy, shape=(m, n))
        v.probability_rows("ref_policy", ref)
        rho = np.full(m, 1.0 / m) if self.context_probs is None else v.float_array(
            "context_probs", self.context_probs, shape=(m,))
        v.probability_rows("context_probs", rho)
        for name, arr in (("rewards", rewards), ("ref_policy", ref), ("context_probs", rho)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_contexts(self) -> int:
        """m, the number of contexts."""
        return self.rewards.shape[0]

    @property
    def n_actions(self) -> int:
        """n, the number of actions per context."""
        return self.rewards.shape[1]

    @property
    def log_ref(self) -> np.ndarray:
        """log π_ref, shape (n_contexts, n_actions)."""
        return np.log(self.ref_policy)

    def target(self, alpha: float) -> np.ndarray:
        """Theorem 1's target softmax(r/α), shape (n_contexts, n_actions)."""
        return soft_optimal_policy(self.rewards, alpha)

    def __repr__(self) -> str:
        return f"TabularProblem(n_contexts={self.n_contexts}, n_actions={self.n_actions})"


def make_problem(n_contexts: int, n_actions: int, *, seed, reward_scale: float = 1.0,
                 ref: str = "uniform") -> TabularProblem:
    """Random problem: r ~ reward_scale·N(0, 1) of shape (n_contexts, n_actions); π_ref uniform or Dirichlet(2)."""
    m = v.positive_int("n_contexts", n_contexts)
    n = v.positive_int("n_actions", n_actions, minimum=2)
    scale = v.nonnegative_float("reward_scale", reward_scale)
    v.choice("ref", ref, REF_KINDS)
    rng = v.rng_from(seed)
    rewards = scale * rng.standard_normal((m, n))
    ref_policy = None
    if ref == "dirichlet":
        # Concentration 2 keeps every entry comfortably away from 0 (strict positivity is required).
        ref_policy = rng.dirichlet(np.full(n, 2.0), size=m)
        ref_policy /= ref_policy.sum(axis=1, keepdims=True)
    return TabularProblem(rewards, ref_policy)


def soft_optimal_policy(rewards, alpha: float) -> np.ndarray:
    """softmax(rewards / alpha) along the last axis: Theorem 1's minimiser, shape of rewards."""
    alpha = v.positive_float("alpha", alpha)
    r = v.float_array("rewards", rewards)
    if r.ndim < 1 or r.shape[-1] < 1:
        raise ValueError(f"rewards must have a non-empty last axis, got shape {r.shape}")
    return np.exp(log_softmax(r / alpha, axis=-1))
