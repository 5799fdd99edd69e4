"""Metrics of SPEC §7 by hand (two actions), the reporting helper, and bad inputs."""
import math

import numpy as np
import pytest

from spo_tabular import TabularProblem
from spo_tabular.metrics import (entropy, expected_reward, kl, max_abs_log_ratio, policy_distances, tv,
                                 weighted_mean, win_rate)

P = np.array([[0.75, 0.25], [0.5, 0.5]])
Q = np.array([[0.5, 0.5], [0.5, 0.5]])


def test_values_by_hand():
    np.testing.assert_allclose(tv(P, Q), [0.25, 0.0])
    np.testing.assert_allclose(kl(P, Q), [0.75 * math.log(1.5) + 0.25 * math.log(0.5), 0.0], rtol=1e-15)
    np.testing.assert_allclose(entropy(Q), [math.log(2)] * 2)
    np.testing.assert_allclose(max_abs_log_ratio(P, Q), [math.log(2), 0.0], rtol=1e-15)   # |log ¼ − log ½|
    np.testing.assert_allclose(expected_reward(np.array([[1.0, 0.0], [2.0, 4.0]]), P), [0.75, 3.0])
    assert kl(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == math.inf
    assert kl(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))[0] == pytest.approx(math.log(2))


def test_win_rate_by_hand():
    """r = (1, 0): WR(π, π') = Σ π_i π'_j P_ij with P_01 = σ(1), P_ii = ½."""
    problem = TabularProblem(np.array([[1.0, 0.0]]))
    s = 1 / (1 + math.exp(-1))
    pi, other = np.array([[0.75, 0.25]]), np.array([[0.5, 0.5]])
    expected = 0.75 * 0.5 * 0.5 + 0.75 * 0.5 * s + 0.25 * 0.5 * (1 - s) + 0.25 * 0.5 * 0.5
    assert win_rate(problem, pi, other) == pytest.approx(expected, rel=1e-15)
    det = np.array([[[0.5, 1.0], [0.0, 0.5]]])          # deterministic expert
    assert win_rate(problem, np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), det) == 1.0


def test_policy_distances_reports_max_and_weighted_mean():
    d = policy_distances(P, Q, np.array([0.25, 0.75]))
    assert d["max_tv"] == 0.25 and d["mean_tv"] == pytest.approx(0.0625)
    assert d["kl"] == pytest.approx(0.25 * kl(P, Q)[0]) and d["max_log_ratio"] == pytest.approx(math.log(2))
    assert weighted_mean([1.0, 3.0], [0.5, 0.5]) == 2.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="rows must sum to 1"):
        tv(np.array([[0.5, 0.6]]), Q[:1])
    with pytest.raises(ValueError, match="non-negative"):
        kl(np.array([[1.5, -0.5]]), Q[:1])
    with pytest.raises(ValueError, match="shape"):
        tv(P, Q[:1])
    with pytest.raises(ValueError, match="finite"):
        entropy(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="problem"):
        win_rate(None, P, Q)
    with pytest.raises(ValueError, match="context_probs"):
        policy_distances(P, Q, [1.0])
