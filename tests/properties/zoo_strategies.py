"""Hypothesis strategies shared by the loss-zoo property tests: random problems, log-probabilities, parameters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spo_tabular import TabularProblem


def floats(lo, hi):
    """Finite floats in [lo, hi]."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


alphas = floats(0.1, 10.0)
betas = floats(0.1, 10.0)
taus = floats(0.05, 10.0)
lams = floats(0.0, 3.0)


def arrays(shape, lo, hi):
    """float64 arrays of the given shape with entries in [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


def logps(shape, lo=-30.0, hi=0.0):
    """float64 torch log-probabilities of the given shape."""
    return arrays(shape, lo, hi).map(torch.from_numpy)


@st.composite
def problems(draw, max_contexts=3, min_actions=2, max_actions=5, reward_scale=3.0):
    """A TabularProblem with bounded rewards, a random strictly positive π_ref and ρ."""
    m = draw(st.integers(1, max_contexts))
    n = draw(st.integers(min_actions, max_actions))
    rewards = draw(arrays((m, n), -reward_scale, reward_scale))
    ref = draw(arrays((m, n), 0.2, 5.0))
    rho = draw(arrays((m,), 0.2, 5.0))
    return TabularProblem(rewards, ref / ref.sum(axis=1, keepdims=True), rho / rho.sum())


@st.composite
def preferences(draw, problem):
    """A preference array P (m, n, n) with P + Pᵀ = 1: Bradley–Terry with label noise, or arbitrary."""
    m, n = problem.n_contexts, problem.n_actions
    if draw(st.booleans()):
        eps = draw(floats(0.0, 0.5))
        P = 1.0 / (1.0 + np.exp(-(problem.rewards[:, :, None] - problem.rewards[:, None, :])))
        return (1 - eps) * P + eps * (1 - P)
    upper = draw(arrays((m, n, n), 0.05, 0.95))
    P = np.triu(upper, 1)
    return P + np.tril(1.0 - P.transpose(0, 2, 1), -1) + 0.5 * np.eye(n)

