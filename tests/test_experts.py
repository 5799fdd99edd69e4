"""Expert models beyond Bradley–Terry, partial coverage and the IPO toy data sets (SPEC §2, §3, §9)."""
import math

import numpy as np
import pytest

from spo_tabular import TabularProblem, make_problem, sample_pairs, solve_exact
from spo_tabular.metrics import tv
from spo_tabular.preferences import (
    EXPERT_MODELS, IPO_TOY_DATASETS, bradley_terry, complete_preferences, covered_pair_probs,
    cyclic_preferences, deterministic_preferences, expert_preferences, ipo_toy_dataset, label_noise,
    noisy_bradley_terry, pair_mass, pairs_mask, preference_matrix, thurstone)
from spo_tabular.solvers.exact import NonUniqueMinimizerWarning


def test_noisy_bt_by_hand():
    # Two actions, Δ = 1, ε = 0.2: P_01 = 0.8 σ(1) + 0.2 σ(−1).
    P = noisy_bradley_terry([[1.0, 0.0]], 0.2)
    s = 1 / (1 + math.exp(-1))
    assert P[0, 0, 1] == pytest.approx(0.8 * s + 0.2 * (1 - s), rel=1e-14)
    assert P[0, 1, 0] == pytest.approx(1 - P[0, 0, 1], rel=1e-14)


def test_noise_limits():
    r = np.random.default_rng(0).standard_normal((3, 5))
    np.testing.assert_allclose(noisy_bradley_terry(r, 0.0), bradley_terry(r), atol=0)
    np.testing.assert_allclose(noisy_bradley_terry(r, 0.5), 0.5, atol=1e-15)


def test_thurstone_by_hand():
    P = thurstone([[1.0, 0.0, -0.5]])
    assert P[0, 0, 1] == pytest.approx(0.8413447460685429, rel=1e-12)    # Φ(1)
    assert P[0, 0, 2] == pytest.approx(0.9331927987311419, rel=1e-12)    # Φ(1.5)
    assert P[0, 1, 1] == 0.5


def test_deterministic_by_hand():
    P = deterministic_preferences([[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(P[0], [[0.5, 1, 1], [0, 0.5, 0.5], [0, 0.5, 0.5]])


def test_cyclic_three_actions_is_rock_paper_scissors():
    P = cyclic_preferences(2, 3)
    np.testing.assert_array_equal(P[1], [[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]])
    P4 = cyclic_preferences(1, 4, strength=0.8)
    assert P4[0, 0, 1] == 0.8 and P4[0, 1, 0] == pytest.approx(0.2) and P4[0, 0, 2] == 0.5
    # Each action beats as many as beat it: the row sums are all equal.
    np.testing.assert_allclose(cyclic_preferences(1, 5).sum(axis=2), 2.5)


def test_complete_preferences_fills_the_lower_triangle():
    upper = np.array([[[0.0, 0.9, 0.3], [0.0, 0.0, 0.6], [0.0, 0.0, 0.0]]])
    P = complete_preferences(upper)
    np.testing.assert_allclose(P[0], [[0.5, 0.9, 0.3], [0.1, 0.5, 0.6], [0.7, 0.4, 0.5]])


@pytest.mark.parametrize("model", sorted(EXPERT_MODELS))
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_every_named_model_is_a_valid_preference_array(model, noise):
    problem = make_problem(3, 5, seed=1)
    P = expert_preferences(problem, model, noise=noise)
    assert P.shape == (3, 5, 5)
    np.testing.assert_allclose(P + P.transpose(0, 2, 1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(preference_matrix(problem, P), P)    # accepted by the foundation
    np.testing.assert_allclose(pair_mass(problem, preference=P).sum(), 1.0)


def test_named_models_match_the_constructors():
    problem = make_problem(2, 4, seed=2)
    np.testing.assert_array_equal(expert_preferences(problem, "bt"), bradley_terry(problem.rewards))
    np.testing.assert_allclose(expert_preferences(problem, "noisy", noise=0.1),
                               noisy_bradley_terry(problem.rewards, 0.1), atol=1e-15)
    np.testing.assert_array_equal(expert_preferences(problem, "thurstone"), thurstone(problem.rewards))


def test_label_noise_on_any_model():
    P = deterministic_preferences([[1.0, 0.0]])
    np.testing.assert_allclose(label_noise(P, 0.25)[0, 0, 1], 0.75)


def test_deterministic_samples_always_pick_the_higher_reward():
    problem = make_problem(4, 6, seed=3)
    data = sample_pairs(problem, 2000, seed=4, preference=deterministic_preferences(problem.rewards))
    r = problem.rewards
    assert np.all(r[data.ctx, data.chosen] > r[data.ctx, data.rejected])


def test_noisy_samples_flip_at_the_stated_rate():
    det = TabularProblem(np.array([[5.0, -5.0]]))
    P = label_noise(deterministic_preferences(det.rewards), 0.2)
    data = sample_pairs(det, 40000, seed=5, preference=P)
    assert np.mean(data.chosen == 1) == pytest.approx(0.2, abs=0.01)   # 4σ ≈ 0.008


def test_non_bt_expert_moves_the_minimiser_away_from_softmax():
    """Theorem 1 needs BT: under Thurstone the population minimiser is not softmax(r/α) (SPEC §6)."""
    problem = make_problem(2, 4, seed=6)
    res = solve_exact(problem, alpha=1.0, preference=thurstone(problem.rewards))
    assert tv(res.policy, problem.target(1.0)).max() > 1e-2
    bt = solve_exact(problem, alpha=1.0)
    assert tv(bt.policy, problem.target(1.0)).max() < 1e-9


def test_partial_coverage_connected_path_keeps_theorem1():
    """Shown pairs a–b, b–c, c–d form a connected graph: Theorem 1 still holds (SPEC §6)."""
    problem = make_problem(2, 4, seed=7)
    q = covered_pair_probs(problem, pairs_mask(4, [(0, 1), (1, 2), (2, 3)]))
    assert q[0, 0, 2] == 0 and q[0, 0, 1] == pytest.approx(1 / 6)
    np.testing.assert_allclose(q.sum(axis=(1, 2)), 1.0)
    res = solve_exact(problem, alpha=0.5, sampler=q)
    assert tv(res.policy, problem.target(0.5)).max() < 1e-9


def test_partial_coverage_disconnected_is_not_unique():
    problem = make_problem(1, 4, seed=8)
    q = covered_pair_probs(problem, pairs_mask(4, [(0, 1), (2, 3)]))
    with pytest.warns(NonUniqueMinimizerWarning):
        res = solve_exact(problem, alpha=1.0, sampler=q)
    assert res.status == "not_unique"


def test_ipo_toy_datasets():
    for name, (pairs, _) in IPO_TOY_DATASETS.items():
        problem, data = ipo_toy_dataset(name)
        assert problem.n_contexts == 1 and problem.n_actions == 3
        np.testing.assert_allclose(problem.ref_policy, 1 / 3)
        assert list(zip(data.chosen.tolist(), data.rejected.tolist())) == [tuple(p) for p in pairs]
    _, d1 = ipo_toy_dataset("D1")
    assert d1.counts()[0, 0, 1] == d1.counts()[0, 1, 2] == d1.counts()[0, 0, 2] == 1
    _, d3 = ipo_toy_dataset("D3")
    assert 2 not in d3.chosen and 2 not in d3.rejected       # c never shown
    _, d2 = ipo_toy_dataset("D2")
    assert sorted(d2.chosen.tolist()) == [0, 1, 2]          # every action wins exactly once


def test_bad_inputs():
    problem = make_problem(2, 3, seed=0)
    with pytest.raises(ValueError, match=r"model must be one of \['bt', 'cyclic', 'deterministic', 'noisy', 'thurstone'\]"):
        expert_preferences(problem, "luce")
    with pytest.raises(ValueError, match="noise"):
        expert_preferences(problem, "noisy", noise=0.7)
    with pytest.raises(ValueError, match="noise"):
        noisy_bradley_terry(problem.rewards, -0.1)
    with pytest.raises(TypeError, match="problem"):
        expert_preferences(np.zeros((2, 3)), "bt")
    with pytest.raises(ValueError, match="strength"):
        cyclic_preferences(1, 3, strength=0.2)
    with pytest.raises(ValueError, match="n_actions"):
        cyclic_preferences(1, 2)
    with pytest.raises(ValueError, match="upper"):
        complete_preferences(np.full((1, 3, 3), 2.0))
    with pytest.raises(ValueError, match="upper"):
        complete_preferences(np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="rewards"):
        thurstone(np.zeros(3))
    with pytest.raises(TypeError, match="shown"):
        covered_pair_probs(problem, np.ones((3, 3)))
    with pytest.raises(ValueError, match="shown"):
        covered_pair_probs(problem, np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="every context"):
        covered_pair_probs(problem, np.eye(3, dtype=bool))
    with pytest.raises(ValueError, match="pairs"):
        pairs_mask(3, [(0, 0)])
    with pytest.raises(ValueError, match="pairs"):
        pairs_mask(3, [(0, 5)])
    with pytest.raises(ValueError, match=r"name must be one of \['D1', 'D2', 'D3'\]"):
        ipo_toy_dataset("D4")
