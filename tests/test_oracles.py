"""Closed-form oracles (SPEC §6): values by hand, and a clear NoClosedFormError where none exists."""
import numpy as np
import pytest
from scipy.special import softmax

from spo_tabular import TabularProblem, make_problem
from spo_tabular.oracles import ORACLES, NoClosedFormError, ipo_closed_form, oracle_policy

PROBLEM = make_problem(3, 4, seed=2, ref="dirichlet")


def test_every_loss_and_rlhf_has_an_entry():
    assert set(ORACLES) == {"spo", "spo_best_of_n", "spo_ranked", "dpo", "rlhf", "ipo", "hinge", "cpo"}


def test_spo_family_oracle_is_the_soft_optimum():
    for loss, extra in (("spo", {}), ("spo_best_of_n", {"k": 3}), ("spo_ranked", {"k": 4})):
        np.testing.assert_array_equal(oracle_policy(PROBLEM, loss=loss, alpha=0.7, **extra), PROBLEM.target(0.7))


def test_dpo_and_rlhf_oracle_by_hand():
    """Two actions, π_ref = (0.2, 0.8), r = (1, 0), β = 0.5: π ∝ (0.2 e², 0.8)."""
    problem = TabularProblem(np.array([[1.0, 0.0]]), ref_policy=np.array([[0.2, 0.8]]))
    expected = np.array([0.2 * np.e ** 2, 0.8]) / (0.2 * np.e ** 2 + 0.8)
    for loss in ("dpo", "rlhf"):
        np.testing.assert_allclose(oracle_policy(problem, loss=loss, beta=0.5)[0], expected, rtol=1e-14)


def test_ipo_oracle_by_hand_for_two_actions():
    """n = 2: g_1 − g_2 = (2P_12 − 1)/(2τ) exactly (a single edge has no least-squares conflict)."""
    problem = TabularProblem(np.array([[0.5, -0.5]]), ref_policy=np.array([[0.4, 0.6]]))
    tau = 0.2
    pi = oracle_policy(problem, loss="ipo", tau=tau)
    target = (2 / (1 + np.exp(-1.0)) - 1) / (2 * tau)
    g = np.log(pi[0]) - np.log(problem.ref_policy[0])
    assert g[0] - g[1] == pytest.approx(target, rel=1e-13)


def test_ipo_oracle_with_a_symmetric_cycle_is_the_reference():
    """P(a≻b) = P(b≻c) = P(c≻a) = 0.8: the targets around the cycle cancel, so g is constant and π = π_ref."""
    problem = TabularProblem(np.zeros((1, 3)), ref_policy=np.array([[0.5, 0.3, 0.2]]))
    P = np.full((1, 3, 3), 0.5)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        P[0, a, b], P[0, b, a] = 0.8, 0.2
    np.testing.assert_allclose(oracle_policy(problem, loss="ipo", tau=0.1, preference=P), problem.ref_policy,
                               rtol=0, atol=1e-15)


def test_ipo_closed_form_three_actions_by_least_squares():
    """A generic W: compare with numpy's least squares on the stacked equations √S_ij (g_i − g_j − y_ij)."""
    rng = np.random.default_rng(0)
    W = rng.random((1, 3, 3))
    W[0, np.arange(3), np.arange(3)] = 0
    tau = 0.7
    rows, rhs = [], []
    for i in range(3):
        for j in range(3):
            if i != j:                                  # Σ W_ij (g_i − g_j − 1/(2τ))², one row per ordered pair
                row = np.zeros(3)
                row[i], row[j] = 1, -1
                rows.append(np.sqrt(W[0, i, j]) * row)
                rhs.append(np.sqrt(W[0, i, j]) / (2 * tau))
    g, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    log_ref = np.log(np.array([[0.2, 0.3, 0.5]]))
    np.testing.assert_allclose(ipo_closed_form(W, log_ref, tau=tau), softmax(log_ref + g, axis=1), rtol=1e-12)


@pytest.mark.parametrize("loss, params, match", [
    ("hinge", {"beta": 1.0}, "no closed-form minimiser is known for loss='hinge'"),
    ("cpo", {"beta": 1.0}, "no closed-form minimiser is known for loss='cpo'"),
    ("spo", {"alpha": 1.0, "beta": 0.1}, "beta > 0"),
    ("spo_ranked", {"alpha": 1.0, "beta": 0.1, "k": 3}, "beta > 0"),
])
def test_no_closed_form_is_a_clear_error(loss, params, match):
    with pytest.raises(NoClosedFormError, match=match):
        oracle_policy(PROBLEM, loss=loss, **params)


def test_settings_that_break_the_oracle_are_refused():
    P = np.full((3, 4, 4), 0.5)
    with pytest.raises(NoClosedFormError, match="non-Bradley"):
        oracle_policy(PROBLEM, loss="spo", alpha=1.0, preference=P)
    with pytest.raises(NoClosedFormError, match="asymmetric weights"):
        oracle_policy(PROBLEM, loss="dpo", beta=1.0, weights=np.triu(np.ones((3, 4, 4))) + 1)
    q = np.zeros((3, 4, 4))
    q[:, 0, 1] = q[:, 2, 3] = 0.5                       # two components: {0, 1} and {2, 3}
    with pytest.raises(NoClosedFormError, match="disconnected"):
        oracle_policy(PROBLEM, loss="spo", alpha=1.0, sampler=q)
    with pytest.raises(NoClosedFormError, match="disconnected"):
        oracle_policy(PROBLEM, loss="ipo", tau=1.0, sampler=q)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"loss": "simpo"}, ValueError, "loss must be one of"),
    ({"loss": "spo"}, TypeError, "alpha is required"),
    ({"loss": "spo", "alpha": 1.0, "tau": 1.0}, ValueError, "tau is not a parameter"),
    ({"loss": "spo_best_of_n", "alpha": 1.0, "k": 9}, ValueError, "at most n_actions"),
    ({"loss": "spo_best_of_n", "alpha": 1.0, "k": 2, "sampler": "ref"}, ValueError, "sampler must be 'uniform'"),
    ({"loss": "dpo", "beta": 0.0}, ValueError, "beta"),
    ({"loss": "ipo", "tau": 1.0, "preference": np.ones((3, 4, 4))}, ValueError, "P \\+ Pᵀ = 1"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        oracle_policy(PROBLEM, **kwargs)
    with pytest.raises(TypeError, match="problem"):
        oracle_policy(None, loss="spo", alpha=1.0)
