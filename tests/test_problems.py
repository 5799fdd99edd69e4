"""TabularProblem, make_problem and soft_optimal_policy: values by hand, and every bad input."""
import numpy as np
import pytest

from spo_tabular import TabularProblem, make_problem, soft_optimal_policy


def test_soft_optimal_policy_by_hand():
    # rewards (0, log 3), alpha = 1: softmax = (1/4, 3/4); alpha = 2: (1, sqrt 3)/(1 + sqrt 3)
    r = np.array([[0.0, np.log(3.0)]])
    np.testing.assert_allclose(soft_optimal_policy(r, 1.0), [[0.25, 0.75]], rtol=1e-15)
    s3 = np.sqrt(3.0)
    np.testing.assert_allclose(soft_optimal_policy(r, 2.0), [[1 / (1 + s3), s3 / (1 + s3)]], rtol=1e-15)


def test_soft_optimal_policy_limits_and_stability():
    r = np.array([[1.0, 2.0, 3.0]])
    assert soft_optimal_policy(r, 1e-3)[0, 2] == pytest.approx(1.0)            # alpha -> 0: argmax
    np.testing.assert_allclose(soft_optimal_policy(r, 1e6), np.full((1, 3), 1 / 3), atol=1e-6)
    huge = soft_optimal_policy(np.array([[1e3, -1e3]]), 1e-3)                # exp would overflow
    assert np.all(np.isfinite(huge)) and huge[0, 0] == 1.0


def test_problem_defaults_and_shapes():
    p = TabularProblem(np.zeros((3, 4)))
    assert (p.n_contexts, p.n_actions) == (3, 4)
    np.testing.assert_allclose(p.ref_policy, 0.25)
    np.testing.assert_allclose(p.context_probs, 1 / 3)
    assert p.rewards.dtype == np.float64 and not p.rewards.flags.writeable


def test_make_problem_reproducible_and_dirichlet_positive():
    a = make_problem(5, 7, seed=3, ref="dirichlet")
    b = make_problem(5, 7, seed=3, ref="dirichlet")
    c = make_problem(5, 7, seed=4, ref="dirichlet")
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.ref_policy, b.ref_policy)
    assert not np.array_equal(a.rewards, c.rewards)
    assert np.all(a.ref_policy > 0)
    np.testing.assert_allclose(a.ref_policy.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rewards=np.array([[0.0, np.nan]])), "rewards"),
    (dict(rewards=np.array([[0.0, np.inf]])), "rewards"),
    (dict(rewards=np.zeros(3)), "rewards"),
    (dict(rewards=np.zeros((2, 1))), "at least 2 actions"),
    (dict(rewards=np.zeros((2, 3)), ref_policy=np.full((2, 2), 0.5)), "ref_policy"),
    (dict(rewards=np.zeros((1, 2)), ref_policy=np.array([[0.7, 0.7]])), "ref_policy.*sum to 1"),
    (dict(rewards=np.zeros((1, 2)), ref_policy=np.array([[1.0, 0.0]])), "ref_policy.*positive"),
    (dict(rewards=np.zeros((1, 2)), ref_policy=np.array([[1.5, -0.5]])), "ref_policy.*positive"),
    (dict(rewards=np.zeros((2, 2)), context_probs=np.array([0.5, 0.6])), "context_probs"),
    (dict(rewards=np.zeros((2, 2)), context_probs=np.array([1.0])), "context_probs"),
])
def test_problem_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabularProblem(**kwargs)


def test_sum_error_message_says_how_far_off():
    with pytest.raises(ValueError, match="off by up to 0.4"):
        TabularProblem(np.zeros((1, 2)), ref_policy=np.array([[0.7, 0.7]]))


@pytest.mark.parametrize("args, kwargs, exc", [
    ((0, 3), dict(seed=0), ValueError),
    ((2, 1), dict(seed=0), ValueError),
    ((2.5, 3), dict(seed=0), TypeError),
    ((2, 3), dict(seed=None), TypeError),
    ((2, 3), dict(seed=0, ref="gaussian"), ValueError),
    ((2, 3), dict(seed=0, reward_scale=-1.0), ValueError),
    ((2, 3), dict(seed=0, reward_scale=float("nan")), ValueError),
])
def test_make_problem_rejects_bad_input(args, kwargs, exc):
    with pytest.raises(exc):
        make_problem(*args, **kwargs)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_soft_optimal_policy_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        soft_optimal_policy(np.zeros((1, 2)), alpha)
