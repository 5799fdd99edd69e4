"""Best-of-n and ranked data (SPEC §2–§3): Luce / Plackett–Luce samplers, their data classes, and the
choice events that turn data or the population into objectives."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from spo_tabular import PairData, TabularProblem, make_problem
from spo_tabular.choice_sets import (MAX_SETS, data_events, n_population_sets, pair_weights_from_samples,
                                     population_events)
from spo_tabular.preferences import BestOfNData, RankedData, sample_best_of_n, sample_rankings



def within_sampling_error(freq, prob, n, sigmas=5.0):
    """|empirical − p| ≤ sigmas·sqrt(p(1 − p)/n) for every entry (binomial standard error)."""
    freq, prob = np.asarray(freq), np.asarray(prob)
    return np.all(np.abs(freq - prob) <= sigmas * np.sqrt(prob * (1 - prob) / n) + 1e-12)


PROBLEM = TabularProblem(np.array([[1.0, 0.0, -0.5, 0.3, 2.0]]), ref_policy=np.array([[0.1, 0.2, 0.3, 0.15, 0.25]]))
N = 200_000


def test_best_of_n_shows_uniform_subsets_in_random_order():
    data = sample_best_of_n(PROBLEM, N, 3, seed=0)
    assert data.shown.shape == (N, 3) and data.k == 3 and len(data) == N
    assert np.all(np.sort(data.shown, 1)[:, 1:] != np.sort(data.shown, 1)[:, :-1])
    counts = np.unique(np.sort(data.shown, 1) @ np.array([25, 5, 1]), return_counts=True)[1]   # one code per subset
    assert counts.size == 10 and within_sampling_error(counts / N, np.full(10, 0.1), N)
    # Order is random: action 0, when shown, sits in each of the 3 positions a third of the time.
    pos = np.nonzero(data.shown == 0)[1]
    assert within_sampling_error(np.bincount(pos, minlength=3) / pos.size, np.full(3, 1 / 3), pos.size)


def test_best_of_n_winner_follows_luce():
    """With k = n every sample shows all actions: P(best = i) = softmax(r)_i."""
    data = sample_best_of_n(PROBLEM, N, 5, seed=1)
    freq = np.bincount(data.best_action, minlength=5) / N
    assert within_sampling_error(freq, softmax(PROBLEM.rewards[0]), N)
    # Within a fixed shown set {0, 1, 4}: Luce on those three rewards.
    data = sample_best_of_n(PROBLEM, N, 3, seed=2)
    mask = np.all(np.sort(data.shown, 1) == [0, 1, 4], axis=1)
    freq = np.bincount(data.best_action[mask], minlength=5)[[0, 1, 4]] / mask.sum()
    assert within_sampling_error(freq, softmax(PROBLEM.rewards[0, [0, 1, 4]]), mask.sum())


def test_rankings_follow_plackett_luce():
    """k = 3 of {0, 2, 4}: each of the 6 orders has probability Π_t e^{r_(t)} / Σ_{s≥t} e^{r_(s)}."""
    data = sample_rankings(PROBLEM, N, 3, seed=3)
    mask = np.all(np.sort(data.ranking, 1) == [0, 2, 4], axis=1)
    r = PROBLEM.rewards[0]
    for order in itertools.permutations((0, 2, 4)):
        w = np.exp(r[list(order)])
        p = w[0] / w.sum() * w[1] / w[1:].sum()
        freq = np.mean(np.all(data.ranking[mask] == order, axis=1))
        assert within_sampling_error(freq, p, mask.sum())


def test_ref_sampler_draws_without_replacement_in_proportion_to_the_reference():
    """Successive sampling: shown[0] ~ π_ref and shown[1] | shown[0] = a ~ π_ref restricted to the others."""
    best = sample_best_of_n(PROBLEM, N, 2, seed=4, sampler="ref")
    p = PROBLEM.ref_policy[0]
    assert within_sampling_error(np.bincount(best.shown[:, 0], minlength=5) / N, p, N)
    after = best.shown[best.shown[:, 0] == 2, 1]
    rest = np.where(np.arange(5) == 2, 0.0, p) / (1 - p[2])
    assert within_sampling_error(np.bincount(after, minlength=5) / after.size, rest, after.size)


def test_samplers_are_reproducible_and_vectorised_over_contexts():
    problem = make_problem(4, 6, seed=0, ref="dirichlet")
    a = sample_rankings(problem, 1000, 4, seed=9)
    b = sample_rankings(problem, 1000, 4, seed=9)
    c = sample_rankings(problem, 1000, 4, seed=10)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    assert not np.array_equal(a.ranking, c.ranking)
    assert set(np.unique(a.ctx)) == {0, 1, 2, 3}
    d = sample_best_of_n(problem, 1000, 6, seed=np.random.default_rng(1))
    assert np.all(np.sort(d.shown, 1) == np.arange(6))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n_samples": 0, "k": 2}, ValueError, "n_samples"),
    ({"n_samples": 10, "k": 1}, ValueError, "k must"),
    ({"n_samples": 10, "k": 6}, ValueError, "at most n_actions"),
    ({"n_samples": 10, "k": 2.0}, TypeError, "k must"),
    ({"n_samples": 10, "k": 2, "sampler": "pairs"}, ValueError, "sampler"),
    ({"n_samples": 10, "k": 2, "seed": None}, TypeError, "seed"),
])
def test_sampler_bad_arguments(kwargs, error, match):
    kwargs.setdefault("seed", 0)
    for fn in (sample_best_of_n, sample_rankings):
        with pytest.raises(error, match=match):
            fn(PROBLEM, **kwargs)
    with pytest.raises(TypeError, match="problem"):
        sample_best_of_n("problem", 10, 2, seed=0)


def test_data_classes_validate_their_arrays():
    ctx = np.array([0, 0])
    with pytest.raises(ValueError, match="distinct"):
        BestOfNData(ctx, np.array([[0, 1], [2, 2]]), np.array([0, 1]), 1, 3)
    with pytest.raises(ValueError, match="shown entries"):
        BestOfNData(ctx, np.array([[0, 1], [2, 3]]), np.array([0, 1]), 1, 3)
    with pytest.raises(ValueError, match="best entries"):
        BestOfNData(ctx, np.array([[0, 1], [1, 2]]), np.array([0, 2]), 1, 3)
    with pytest.raises(ValueError, match="rows"):
        RankedData(ctx, np.array([[0, 1, 2]]), 1, 3)
    with pytest.raises(ValueError, match="k >= 2"):
        RankedData(ctx, np.array([[0], [1]]), 1, 3)
    with pytest.raises(TypeError, match="integers"):
        RankedData(ctx, np.array([[0.0, 1.0], [1.0, 2.0]]), 1, 3)
    with pytest.raises(ValueError, match="at least one"):
        RankedData(np.array([], dtype=int), np.zeros((0, 2), dtype=int), 1, 3)
    data = RankedData(ctx, np.array([[0, 1], [2, 1]]), 1, 3)
    with pytest.raises(ValueError):
        data.ranking[0, 0] = 2                          # stored read-only


# --------------------------------------------------------------------------- choice events

def test_population_ranked_events_match_an_enumeration_of_all_rankings():
    """Event masses from the subset recursion equal Σ over all k! orders of each shown set of PL probabilities."""
    problem = make_problem(2, 5, seed=0)
    events = population_events(problem, 4, ranked=True)
    mine = {}
    for ctx, sets, mass in events.groups:
        for e in range(ctx.size):
            for a in range(sets.shape[1]):
                mine[(int(ctx[e]), tuple(sets[e]), int(sets[e, a]))] = mass[e, a]
    brute = {}
    r = problem.rewards
    for x in range(2):
        for S in itertools.combinations(range(5), 4):
            for order in itertools.permutations(S):
                w = np.exp(r[x, list(order)])
                prob = np.prod([w[t] / w[t:].sum() for t in range(3)]) * problem.context_probs[x] / 5
                for t in range(3):
                    key = (x, tuple(sorted(order[t:])), order[t])
                    brute[key] = brute.get(key, 0.0) + prob
    assert set(mine) == set(brute)
    assert max(abs(mine[k] - brute[k]) for k in brute) <= 1e-16


def test_population_events_conserve_mass_per_level_and_are_consistent_bt():
    problem = make_problem(3, 6, seed=1, ref="dirichlet")
    events = population_events(problem, 4, ranked=True)
    for _, _, mass in events.groups:                   # each level holds one unit of probability
        assert mass.sum() == pytest.approx(1.0, rel=1e-14)
    W = events.pair_surrogate()
    r = problem.rewards
    x, i, j = np.nonzero(~np.eye(6, dtype=bool)[None].repeat(3, 0))
    np.testing.assert_allclose(np.log(W[x, i, j] / W[x, j, i]), r[x, i] - r[x, j], rtol=0, atol=1e-13)


def test_population_enumeration_limit_gives_a_clear_error():
    assert n_population_sets(60, 5, ranked=False) == math.comb(60, 5) > MAX_SETS
    problem = make_problem(1, 60, seed=0)
    with pytest.raises(ValueError, match="pass sampled data"):
        population_events(problem, 5, ranked=False)


def test_data_events_and_sample_weights():
    data = RankedData(np.array([0, 1]), np.array([[2, 0, 1], [1, 2, 0]]), 2, 3)
    events = data_events(data)
    assert [g[1].shape for g in events.groups] == [(2, 3), (2, 2)]
    np.testing.assert_array_equal(events.groups[1][1], [[0, 1], [2, 0]])
    beats = events.beats()
    assert beats[0, 2, 0] and beats[0, 2, 1] and beats[0, 0, 1] and not beats[0, 1, 0]
    with pytest.raises(ValueError, match="weights must be non-negative"):
        data_events(data, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="all be zero"):
        data_events(data, weights=[0.0, 0.0])
    with pytest.raises(TypeError, match="BestOfNData or RankedData"):
        data_events("data")


def test_per_sample_pair_weights_make_a_duplicate_equal_weight_two():
    data = PairData(np.array([0, 0, 0]), np.array([0, 1, 0]), np.array([1, 0, 2]), 1, 3)
    dup = PairData(np.array([0, 0, 0, 0]), np.array([0, 1, 0, 0]), np.array([1, 0, 2, 1]), 1, 3)
    mu = pair_weights_from_samples(data, [2.0, 1.0, 1.0])
    np.testing.assert_allclose(data.pair_mass() * mu, dup.pair_mass(), rtol=1e-15)
