"""solve_exact for every loss and solve_rlhf (SPEC §5–§6): sampled data against maximum-likelihood
estimates computed independently (choix), existence / uniqueness reporting, hinge as an LP, and the
parameter checks of the front door."""
import warnings

import choix
import numpy as np
import pytest
import torch
from scipy.special import softmax

from spo_tabular import PairData, TabularProblem, make_problem, pair_mass, sample_pairs
from spo_tabular.oracles import ipo_closed_form
from spo_tabular.preferences import BestOfNData, RankedData, sample_best_of_n, sample_rankings
from spo_tabular.solvers import (LOSS_SOLVERS, ConvergenceWarning, NoFiniteMinimizerWarning,
                                 NonUniqueMinimizerWarning, solve_exact, solve_rlhf)
from spo_tabular.solvers.exact import _solve_spo
from spo_tabular.solvers.hinge_lp import solve_hinge_lp



PROBLEM = make_problem(3, 4, seed=11, ref="dirichlet")


def tv(p, q):
    return float(np.abs(p - q).sum(axis=1).max() / 2)


def centred(theta):
    theta = np.asarray(theta, dtype=float)
    return theta - theta.mean(axis=-1, keepdims=True)


def choix_per_context(fit, m, n, rows):
    """θ̂ (m, n) from a choix estimator run separately on each context's rows."""
    return np.stack([centred(fit(n, rows[x], alpha=0.0, max_iter=10_000, tol=1e-13)) for x in range(m)])


@pytest.fixture(scope="module")
def pairs():
    return sample_pairs(PROBLEM, 3000, seed=1)


@pytest.fixture(scope="module")
def theta_bt(pairs):
    rows = [[(int(w), int(l)) for c, w, l in zip(pairs.ctx, pairs.chosen, pairs.rejected) if c == x] for x in range(3)]
    return choix_per_context(choix.ilsr_pairwise, 3, 4, rows)


# --------------------------------------------------------------------------- population

def test_loss_registry_of_the_solver():
    assert set(LOSS_SOLVERS) == {"spo", "spo_best_of_n", "spo_ranked", "dpo", "ipo", "hinge", "cpo"}


def test_spo_path_is_unchanged():
    """loss='spo' is the foundation solver itself: bitwise the same answer."""
    for beta in (0.0, 0.2):
        a = solve_exact(PROBLEM, alpha=0.6, beta=beta)
        b = _solve_spo(PROBLEM, alpha=0.6, beta=beta)
        np.testing.assert_array_equal(a.logits, b.logits)
        assert (a.status, a.n_iter, a.loss) == (b.status, b.n_iter, b.loss)


def test_best_of_two_population_equals_pairwise_population():
    """Shown 2-sets uniform with a Luce winner is the uniform pair sampler with BT labels, also with β > 0."""
    a = solve_exact(PROBLEM, loss="spo_best_of_n", alpha=0.8, beta=0.3, k=2)
    b = solve_exact(PROBLEM, alpha=0.8, beta=0.3)
    assert tv(a.policy, b.policy) <= 1e-12
    assert a.loss == pytest.approx(b.loss, rel=1e-12)


def test_two_action_dpo_and_ipo_by_hand():
    """n = 2, uniform reference: DPO log-odds = Δr/β; IPO log-odds = (2σ(Δr) − 1)/(2τ)."""
    problem = TabularProblem(np.array([[0.7, -0.3]]))
    dpo = solve_exact(problem, loss="dpo", beta=0.5)
    assert dpo.logits[0, 0] - dpo.logits[0, 1] == pytest.approx(1.0 / 0.5, rel=1e-12)
    ipo = solve_exact(problem, loss="ipo", tau=0.25)
    target = (2 / (1 + np.exp(-1.0)) - 1) / (2 * 0.25)
    assert ipo.logits[0, 0] - ipo.logits[0, 1] == pytest.approx(target, rel=1e-12)


def test_cpo_two_actions_stationarity_by_hand():
    """n = 2, W = (w, l): −w·σ(−βd)β + l·σ(βd)β ... the exact minimiser zeroes d/dd of
    w·softplus(−βd) + l·softplus(βd) + λ[w·softplus(−d) + l·softplus(d)] (log π_1 = −softplus(−d))."""
    problem = TabularProblem(np.array([[1.0, 0.0]]))
    beta, lam = 0.7, 0.5
    res = solve_exact(problem, loss="cpo", beta=beta, lam=lam)
    d = res.logits[0, 0] - res.logits[0, 1]
    W = pair_mass(problem)[0]
    w, l = W[0, 1], W[1, 0]
    sig = lambda x: 1 / (1 + np.exp(-x))
    dLdd = -w * beta * sig(-beta * d) + l * beta * sig(beta * d) + lam * (-w * sig(-d) + l * sig(d))
    assert abs(dLdd) <= 1e-14


# --------------------------------------------------------------------------- sampled data vs choix

def test_dpo_and_rlhf_on_pairs_are_the_reference_tilted_by_the_bt_mle(pairs, theta_bt):
    beta = 0.4
    target = softmax(PROBLEM.log_ref + theta_bt / beta, axis=1)
    assert tv(solve_exact(PROBLEM, loss="dpo", beta=beta, data=pairs).policy, target) <= 1e-8
    assert tv(solve_rlhf(PROBLEM, beta=beta, data=pairs).policy, target) <= 1e-8
    assert tv(solve_exact(PROBLEM, alpha=0.3, data=pairs).policy, softmax(theta_bt / 0.3, axis=1)) <= 1e-8


def test_best_of_n_on_data_is_the_soft_luce_mle():
    data = sample_best_of_n(PROBLEM, 3000, 3, seed=2)
    rows = [[(int(w), tuple(int(a) for a in s if a != w)) for c, s, w in zip(data.ctx, data.shown, data.best_action)
             if c == x] for x in range(3)]
    theta = choix_per_context(choix.ilsr_top1, 3, 4, rows)
    for alpha in (0.5, 2.0):
        res = solve_exact(PROBLEM, loss="spo_best_of_n", alpha=alpha, data=data)
        assert res.status == "converged" and tv(res.policy, softmax(theta / alpha, axis=1)) <= 1e-8
    rlhf = solve_rlhf(PROBLEM, beta=0.5, data=data)
    assert tv(rlhf.policy, softmax(PROBLEM.log_ref + theta / 0.5, axis=1)) <= 1e-8


def test_ranked_on_data_is_the_soft_plackett_luce_mle():
    data = sample_rankings(PROBLEM, 3000, 3, seed=3)
    rows = [[tuple(int(a) for a in r) for c, r in zip(data.ctx, data.ranking) if c == x] for x in range(3)]
    theta = choix_per_context(choix.ilsr_rankings, 3, 4, rows)
    res = solve_exact(PROBLEM, loss="spo_ranked", alpha=0.7, data=data)
    assert res.status == "converged" and tv(res.policy, softmax(theta / 0.7, axis=1)) <= 1e-8


def test_ipo_on_data_is_the_laplacian_least_squares_of_the_empirical_mass(pairs):
    res = solve_exact(PROBLEM, loss="ipo", tau=0.3, data=pairs)
    assert tv(res.policy, ipo_closed_form(pairs.pair_mass(), PROBLEM.log_ref, tau=0.3)) <= 1e-12


def test_k_must_match_the_data():
    data = sample_best_of_n(PROBLEM, 50, 3, seed=2)
    with pytest.raises(ValueError, match="k=2 does not match"):
        solve_exact(PROBLEM, loss="spo_best_of_n", alpha=1.0, k=2, data=data)


# --------------------------------------------------------------------------- existence and uniqueness

UNANIMOUS = PairData(np.array([0, 0, 0]), np.array([0, 0, 1]), np.array([1, 2, 2]), 1, 3)   # 0 ≻ 1 ≻ 2, never reversed
ONE = TabularProblem(np.zeros((1, 3)))


def test_unanimous_data_has_no_finite_dpo_minimiser_but_spo_with_kl_stays_finite():
    """SPEC §6 collapse: DPO runs off to a deterministic policy; SPO with β > 0 keeps every action alive."""
    with pytest.warns(NoFiniteMinimizerWarning, match="no finite minimiser"):
        res = solve_exact(ONE, loss="dpo", beta=0.5, data=UNANIMOUS)
    assert res.status == "no_finite_minimizer" and not res.converged
    # (With β = 0.1 the minimiser is still finite but π(2) ≈ e^{−c/β} ~ 1e-48: KL(π‖π_ref) stays bounded
    # as π(2) → 0, only its gradient π(2)·log π(2) resists; β = 0.5 keeps it at a visible 0.023.)
    spo = solve_exact(ONE, alpha=1.0, beta=0.5, data=UNANIMOUS)
    assert spo.status == "converged" and spo.policy.min() > 1e-2
    with pytest.warns(NoFiniteMinimizerWarning):
        rlhf = solve_rlhf(ONE, beta=0.5, data=UNANIMOUS)
    assert rlhf.status == "no_finite_minimizer"


def test_multi_response_data_needs_a_strongly_connected_beats_graph():
    data = BestOfNData(np.array([0, 0]), np.array([[0, 1, 2], [1, 2, 0]]), np.array([0, 0]), 1, 3)  # 0 and 1 only win
    with pytest.warns(NoFiniteMinimizerWarning):
        assert solve_exact(ONE, loss="spo_best_of_n", alpha=1.0, data=data).status == "no_finite_minimizer"
    assert solve_exact(ONE, loss="spo_best_of_n", alpha=1.0, beta=0.2, data=data).status == "converged"
    cyclic = RankedData(np.array([0, 0, 0]), np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]]), 1, 3)
    res = solve_exact(ONE, loss="spo_ranked", alpha=1.0, data=cyclic)
    assert res.status == "converged"
    np.testing.assert_allclose(res.policy, np.full((1, 3), 1 / 3), atol=1e-14)    # symmetric data


def test_cpo_needs_every_action_chosen_once_when_lambda_is_positive():
    never_chosen = PairData(np.array([0, 0, 0]), np.array([0, 1, 0]), np.array([1, 0, 2]), 1, 3)
    with pytest.warns(NoFiniteMinimizerWarning):
        assert solve_exact(ONE, loss="cpo", beta=1.0, data=never_chosen).status == "no_finite_minimizer"
    cycle = PairData(np.array([0, 0, 0]), np.array([0, 1, 2]), np.array([1, 2, 0]), 1, 3)
    assert solve_exact(ONE, loss="cpo", beta=1.0, data=cycle).status == "converged"
    # λ = 0 is DPO without a reference: the Zermelo condition decides.
    with pytest.warns(NoFiniteMinimizerWarning):
        solve_exact(ONE, loss="cpo", beta=1.0, lam=0.0, data=UNANIMOUS)


def test_ipo_on_a_disconnected_graph_is_reported_not_unique():
    partial = PairData(np.array([0, 0]), np.array([0, 2]), np.array([1, 3]), 1, 4)   # {0,1} and {2,3}
    with pytest.warns(NonUniqueMinimizerWarning, match="not unique"):
        res = solve_exact(TabularProblem(np.zeros((1, 4))), loss="ipo", tau=1.0, data=partial)
    assert res.status == "not_unique" and res.converged
    # Still a minimiser: each observed pair sits at its target margin 1/(2τ).
    assert res.logits[0, 0] - res.logits[0, 1] == pytest.approx(0.5, rel=1e-12)


def test_unconverged_runs_say_so():
    with pytest.warns(ConvergenceWarning, match="stopped after 1"):
        res = solve_exact(PROBLEM, loss="cpo", beta=1.0, max_iter=1)
    assert not res.converged and res.status == "max_iter"


STRONG_KL = make_problem(4, 6, seed=3, reward_scale=3.0, ref="dirichlet")


@pytest.mark.parametrize("loss, extra", [("spo", {}), ("spo_best_of_n", {"k": 3}), ("spo_ranked", {"k": 4})])
def test_a_stalled_newton_run_is_reported_not_returned_silently(loss, extra):
    """Either converged with a vanishing gradient, or status max_iter with a ConvergenceWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_exact(STRONG_KL, loss=loss, alpha=1.0, beta=100.0, **extra)
    if res.status == "converged":
        assert res.grad_norm <= 1e-10
    else:
        assert res.status == "max_iter" and not res.converged
        assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


# Once an xfail (Levenberg–Marquardt damping crawled where the KL Hessian is indefinite); the
# saddle-free Newton fallback fixed it, so it is a plain test now.
@pytest.mark.parametrize("loss, extra", [("spo", {}), ("spo_best_of_n", {"k": 3}), ("spo_ranked", {"k": 4})])
def test_newton_converges_with_a_strong_kl_term(loss, extra):
    assert solve_exact(STRONG_KL, loss=loss, alpha=1.0, beta=100.0, **extra).status == "converged"


# --------------------------------------------------------------------------- hinge

def test_hinge_two_actions_sits_at_the_margin():
    """n = 2, W_12 > W_21: max(0, 1 − βu)W_12 + max(0, 1 + βu)W_21 is minimised exactly at u = 1/β."""
    problem = TabularProblem(np.array([[0.4, 0.0]]), ref_policy=np.array([[0.3, 0.7]]))
    res = solve_exact(problem, loss="hinge", beta=2.0)
    g = res.logits[0] - problem.log_ref[0]
    assert res.status == "converged" and g[0] - g[1] == pytest.approx(0.5, abs=1e-12)


def test_hinge_tie_is_reported_not_unique():
    with pytest.warns(NonUniqueMinimizerWarning, match="not unique"):
        res = solve_exact(TabularProblem(np.zeros((1, 2))), loss="hinge", beta=1.0)
    assert res.status == "not_unique" and res.converged


def test_hinge_lp_value_beats_every_point_of_a_grid():
    """n = 3: the LP value is ≤ the objective on a fine grid of g (and the grid gets within its spacing)."""
    problem = make_problem(2, 3, seed=5)
    W = pair_mass(problem)
    beta = 1.5
    lp = solve_hinge_lp(W, beta=beta)
    grid = np.linspace(-3, 3, 121)
    g1, g2 = np.meshgrid(grid, grid, indexing="ij")
    g = np.stack((np.zeros_like(g1), g1, g2), axis=-1)                  # (G, G, 3), gauge g_0 = 0
    u = g[..., :, None] - g[..., None, :]
    for x in range(2):
        values = (W[x] * np.maximum(0, 1 - beta * u)).sum(axis=(-1, -2))
        assert lp.value[x] <= values.min() + 1e-12
        assert values.min() - lp.value[x] <= 3 * W[x].sum() * beta * (grid[1] - grid[0])
        assert lp.dual_value[x] == pytest.approx(lp.value[x], abs=1e-14)


def test_hinge_on_data_with_a_cycle_is_not_unique():
    cycle = PairData(np.array([0, 0, 0]), np.array([0, 1, 2]), np.array([1, 2, 0]), 1, 3)
    with pytest.warns(NonUniqueMinimizerWarning):
        res = solve_exact(ONE, loss="hinge", beta=1.0, data=cycle)
    assert res.loss == pytest.approx(1.0, abs=1e-12)    # every cycle edge pays, in total Σ W = 1


# --------------------------------------------------------------------------- front door

@pytest.mark.parametrize("kwargs, error, match", [
    ({"loss": "kto"}, ValueError, "loss must be one of"),
    ({"loss": "spo"}, TypeError, "alpha is required"),
    ({"loss": "dpo"}, TypeError, "beta is required"),
    ({"loss": "ipo"}, TypeError, "tau is required"),
    ({"loss": "spo_ranked", "alpha": 1.0}, TypeError, "k is required"),
    ({"loss": "spo", "alpha": 1.0, "tau": 1.0}, ValueError, "tau not used by loss='spo'"),
    ({"loss": "dpo", "beta": 1.0, "alpha": 1.0}, ValueError, "alpha not used"),
    ({"loss": "dpo", "beta": -1.0}, ValueError, "beta"),
    ({"loss": "cpo", "beta": 1.0, "lam": -1.0}, ValueError, "lam"),
    ({"loss": "spo_best_of_n", "alpha": 1.0, "k": 5}, ValueError, "at most n_actions"),
    ({"loss": "spo_best_of_n", "alpha": 1.0, "k": 2, "sampler": "ref"}, ValueError, "sampler must be 'uniform'"),
    ({"loss": "spo_best_of_n", "alpha": 1.0, "k": 2, "preference": np.full((3, 4, 4), 0.5)}, ValueError,
     "preference must be None"),
    ({"loss": "dpo", "beta": 1.0, "weights": np.ones((3, 4))}, ValueError, "weights must have shape"),
    ({"loss": "dpo", "beta": 1.0, "weights": -np.ones((3, 4, 4))}, ValueError, "non-negative"),
    ({"loss": "dpo", "beta": 1.0, "data": "pairs"}, TypeError, "PairData"),
    ({"loss": "spo_ranked", "alpha": 1.0, "data": PairData(np.array([0]), np.array([0]), np.array([1]), 3, 4)},
     TypeError, "RankedData"),
    ({"loss": "ipo", "tau": 1.0, "tol": 0.0}, ValueError, "tol"),
])
def test_bad_arguments_are_refused_with_the_argument_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        solve_exact(PROBLEM, **kwargs)


def test_solve_rlhf_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        solve_rlhf(PROBLEM, beta=0.0)
    with pytest.raises(TypeError, match="problem"):
        solve_rlhf(None, beta=1.0)
    with pytest.raises(TypeError, match="PairData, BestOfNData, RankedData"):
        solve_rlhf(PROBLEM, beta=1.0, data=[1, 2])


def test_solve_rlhf_population_with_a_non_bt_preference_fits_bt_by_maximum_likelihood():
    """Label noise ε keeps P monotone in r but not BT: RLHF uses the population BT fit (SPO α = 1)."""
    P = 1 / (1 + np.exp(-(PROBLEM.rewards[:, :, None] - PROBLEM.rewards[:, None, :])))
    noisy = 0.8 * P + 0.2 * (1 - P)
    fit = solve_exact(PROBLEM, alpha=1.0, preference=noisy)
    res = solve_rlhf(PROBLEM, beta=0.5, preference=noisy)
    assert res.status == "converged"
    assert tv(res.policy, softmax(PROBLEM.log_ref + fit.logits / 0.5, axis=1)) <= 1e-12
    assert tv(res.policy, softmax(PROBLEM.log_ref + PROBLEM.rewards / 0.5, axis=1)) > 1e-3
