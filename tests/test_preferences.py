"""Pair distributions, population pair mass and the vectorised sampler (SPEC §2–§3)."""
import numpy as np
import pytest
from scipy.special import expit

from spo_tabular import PairData, TabularProblem, make_problem, pair_mass, pair_probs, sample_pairs


def test_uniform_pair_mass_formula():
    p = make_problem(3, 4, seed=0)
    W = pair_mass(p)
    r = p.rewards
    for x in range(3):
        for i in range(4):
            for j in range(4):
                expected = 0.0 if i == j else (1 / 3) * 2 / (4 * 3) * expit(r[x, i] - r[x, j])
                assert W[x, i, j] == pytest.approx(expected, rel=1e-14, abs=1e-300)
    assert W.sum() == pytest.approx(1.0, abs=1e-14)


def test_ref_pair_mass_formula_with_nonuniform_context_probs():
    rng = np.random.default_rng(1)
    ref = rng.dirichlet(np.ones(3), size=2)
    rho = np.array([0.3, 0.7])
    p = TabularProblem(rng.normal(size=(2, 3)), ref_policy=ref, context_probs=rho)
    W = pair_mass(p, sampler="ref")
    for x in range(2):
        z = 1 - np.sum(ref[x] ** 2)
        for i in range(3):
            for j in range(3):
                if i != j:
                    shown = 2 * ref[x, i] * ref[x, j] / z
                    assert W[x, i, j] == pytest.approx(rho[x] * shown * expit(p.rewards[x, i] - p.rewards[x, j]))
    assert W.sum() == pytest.approx(1.0)
    q = pair_probs(p, "ref")
    np.testing.assert_allclose(q.sum(axis=(1, 2)), 1.0)


def test_explicit_sampler_array_partial_coverage():
    p = make_problem(1, 3, seed=0)
    q = np.zeros((1, 3, 3))
    q[0, 0, 1] = q[0, 1, 0] = 0.5            # only the pair {0, 1} is ever shown
    W = pair_mass(p, sampler=q)
    assert W[0, 0, 2] == W[0, 2, 0] == W[0, 1, 2] == 0
    assert W.sum() == pytest.approx(1.0)


def test_sampler_empirical_mass_matches_population_within_sampling_error():
    for sampler in ("uniform", "ref"):
        p = make_problem(3, 4, seed=2, ref="dirichlet")
        N = 400_000
        data = sample_pairs(p, N, seed=7, sampler=sampler)
        W_hat, W = data.pair_mass(), pair_mass(p, sampler=sampler)
        se = np.sqrt(W * (1 - W) / N) + 1e-12
        z = np.abs(W_hat - W) / se
        assert z.max() < 5.0, (sampler, z.max())    # 48 cells, 5 sigma: a false alarm is ~1e-5


def test_sampler_nonuniform_context_probs():
    p = TabularProblem(np.zeros((2, 3)), context_probs=np.array([0.9, 0.1]))
    data = sample_pairs(p, 100_000, seed=0)
    assert np.mean(data.ctx == 0) == pytest.approx(0.9, abs=0.005)


def test_sampler_reproducible_and_seed_sensitive():
    p = make_problem(4, 5, seed=0)
    a, b, c = (sample_pairs(p, 1000, seed=s) for s in (1, 1, 2))
    for name in ("ctx", "chosen", "rejected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.chosen, c.chosen)
    assert a.ctx.dtype == np.int64 and np.all(a.chosen != a.rejected)


def test_pairdata_counts_and_mass_by_hand():
    d = PairData(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([0, 0, 2]), 2, 3)
    W = d.pair_mass()
    assert W[0, 1, 0] == pytest.approx(2 / 3) and W[1, 0, 2] == pytest.approx(1 / 3)
    assert W.sum() == pytest.approx(1.0) and len(d) == 3


@pytest.mark.parametrize("args, exc, match", [
    ((np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=int), 1, 2), ValueError, "at least one"),
    ((np.array([0]), np.array([2]), np.array([0]), 1, 2), ValueError, "chosen"),
    ((np.array([1]), np.array([1]), np.array([0]), 1, 2), ValueError, "ctx"),
    ((np.array([0]), np.array([-1]), np.array([0]), 1, 2), ValueError, "chosen"),
    ((np.array([0]), np.array([1.0]), np.array([0]), 1, 2), TypeError, "chosen"),
    ((np.array([0, 0]), np.array([1]), np.array([0]), 1, 2), ValueError, "same length"),
    ((np.array([0]), np.array([1]), np.array([1]), 1, 2), ValueError, "differ"),
    ((np.array([0]), np.array([1]), np.array([0]), 1, 1), ValueError, "n_actions"),
])
def test_pairdata_rejects_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        PairData(*args)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_pairs=0, seed=0), ValueError, "n_pairs"),
    (dict(n_pairs=10, seed=0, sampler="gaussian"), ValueError, "sampler.*uniform"),
    (dict(n_pairs=10, seed=0, sampler=np.ones((1, 3, 3))), ValueError, "diagonal"),
    (dict(n_pairs=10, seed=0, sampler=np.zeros((1, 2, 2))), ValueError, "shape"),
    (dict(n_pairs=10, seed=None), TypeError, "seed"),
])
def test_sample_pairs_rejects_bad_input(kwargs, exc, match):
    p = make_problem(1, 3, seed=0)
    with pytest.raises(exc, match=match):
        sample_pairs(p, **kwargs)


def test_pair_mass_rejects_non_problem_and_bad_preference():
    with pytest.raises(TypeError, match="problem"):
        pair_mass(np.zeros((2, 2)))
    p = make_problem(1, 2, seed=0)
    with pytest.raises(ValueError, match="P \\+ Pᵀ = 1"):
        pair_mass(p, preference=np.full((1, 2, 2), 0.9))


@pytest.mark.parametrize("n_actions, k", [(3, 2), (64, 8), (64, 63), (65, 5), (300, 12)])
def test_repeat_detection_matches_a_set_per_row(n_actions, k):
    # The bitmask scan (up to 64 actions) and the sorted scan beyond, against Python sets row by row,
    # across block boundaries: even rows are distinct (a permutation's first k), odd rows random;
    # the highest action (bit 63 at n = 64) is put in every row, once in even rows.
    from spo_tabular.preferences import _CHUNK, _has_repeat
    rng = np.random.default_rng(n_actions * 1000 + k)
    N = _CHUNK + 777
    rows = rng.integers(0, n_actions, size=(N, k))
    rows[::2] = rng.permuted(np.tile(np.arange(n_actions - 1), ((N + 1) // 2, 1)), axis=1)[:, :k]
    rows[:, 0] = n_actions - 1
    want = np.array([len(set(r)) < k for r in rows.tolist()])
    assert not want[::2].any() and want[1::2].any()       # both kinds of row are really there
    np.testing.assert_array_equal(_has_repeat(rows, n_actions), want)
