"""Numerics at the extremes: α, β, τ from 1e-3 to 1e3, rewards up to ±1e3, logit margins up to 1e4.

Losses and their gradients stay finite (float16 / bfloat16 inputs are upcast); every solver returns
finite numbers, and either claims convergence — checked independently (the oracle, or the autograd
gradient and Hessian of the objective assembled from the per-sample losses, or the hinge LP's dual
certificate) — or says it did not converge, with a reason and a warning. Never NaN, never a silent
wrong answer. The solver failures this catalogue once found are regression tests at the end.
"""
import itertools
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from spo_tabular import (TabularProblem, make_problem, oracle_policy, sample_best_of_n, sample_pairs, solve_exact,
                         solve_rlhf)
from spo_tabular.checks import check_theorem1
from spo_tabular.loss_checks import hinge_certificate, population_loss
from spo_tabular.losses import (confidence_weights, cpo_loss, dpo_loss, hinge_loss, ipo_loss, spo_best_of_n_loss,
                                spo_loss, spo_ranked_loss)
from spo_tabular.metrics import entropy, kl, max_abs_log_ratio, tv, win_rate
from spo_tabular.solvers import ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning

EXTREMES = (1e-3, 1.0, 1e3)
WARNING_OF = {"max_iter": ConvergenceWarning, "no_finite_minimizer": NoFiniteMinimizerWarning,
              "not_unique": NonUniqueMinimizerWarning}




# =========================================================================== per-sample losses

MARGINS = torch.tensor([-1e4, -1e3, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e3, 1e4], dtype=torch.float64)


def pairwise_losses(lw, ll, s):
    """Every pairwise loss at strength s (α, β or τ), reference 0 so that h = lw − ll."""
    zero = torch.zeros_like(lw)
    return {"spo": spo_loss(lw, ll, alpha=s), "dpo": dpo_loss(lw, ll, zero, zero, beta=s),
            "ipo": ipo_loss(lw, ll, zero, zero, tau=s), "hinge": hinge_loss(lw, ll, zero, zero, beta=s),
            "cpo": cpo_loss(lw, ll, beta=s, lam=s)}


@pytest.mark.parametrize("strength", EXTREMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_pairwise_losses_and_gradients_are_finite_for_margins_up_to_1e4(strength, dtype):
    lw = MARGINS.clone().to(dtype).requires_grad_(True)
    ll = torch.zeros_like(lw, requires_grad=True)
    for name, value in pairwise_losses(lw, ll, strength).items():
        assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), name
        assert bool(torch.isfinite(value).all()), name
        g_w, g_l = torch.autograd.grad(value.sum(), (lw, ll))
        assert bool(torch.isfinite(g_w.float()).all() and torch.isfinite(g_l.float()).all()), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_float32_answer_on_the_same_values(dtype):
    """Upcast first: a float16/bfloat16 input gives bit for bit the float32 loss of its (rounded) values."""
    lw = MARGINS.to(dtype)
    ll = torch.zeros_like(lw)
    for s in EXTREMES:
        low, ref = pairwise_losses(lw, ll, s), pairwise_losses(lw.float(), ll.float(), s)
        for name in low:
            assert torch.equal(low[name], ref[name]), name


def test_far_out_values_by_hand():
    d = torch.tensor([-1e4, 1e4], dtype=torch.float64)
    zero = torch.zeros_like(d)
    # −(1/α) log σ(αd): = −d for αd ≪ 0, = e^{−αd}/α → 0 for αd ≫ 0.
    assert spo_loss(d, zero, alpha=1e3).tolist() == [1e4, 0.0]
    assert spo_loss(d, zero, alpha=1e-3).tolist() == pytest.approx([1e4 + 1e3 * np.log1p(np.exp(-10.0)),
                                                                    1e3 * np.log1p(np.exp(-10.0))], rel=1e-14)
    assert ipo_loss(d, zero, zero, zero, tau=1e-3).tolist() == [(-1e4 - 500.0) ** 2, (1e4 - 500.0) ** 2]
    assert hinge_loss(d, zero, zero, zero, beta=1e3).tolist() == [1.0 + 1e7, 0.0]
    assert cpo_loss(d, zero, beta=1e3, lam=1e3).tolist() == [1e7 + 1e7, -1e7]
    # The SPO gradient in logp_chosen is −σ(−αd): −1 far below, 0 far above.
    lw = d.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(spo_loss(lw, zero, alpha=1e3).sum(), lw)
    assert grad.tolist() == [-1.0, 0.0]


@pytest.mark.parametrize("alpha", EXTREMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_multi_response_losses_and_weights_are_finite_for_logps_down_to_minus_1e4(alpha, dtype):
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        logps = torch.tensor(np.concatenate([rng.uniform(-1e4, 0.0, (6, k)), np.full((1, k), -1e4), np.zeros((1, k))]))
        logps = logps.to(dtype).requires_grad_(True)
        best = torch.tensor(rng.integers(0, k, logps.shape[0]))
        mu = confidence_weights(logps, alpha=alpha, gamma=2.0)
        assert bool(torch.isfinite(mu).all()) and bool((mu >= 0).all())
        for value in (spo_best_of_n_loss(logps, best, alpha=alpha, weights=mu), spo_ranked_loss(logps, alpha=alpha)):
            assert value.dtype in (torch.float32, torch.float64) and bool(torch.isfinite(value).all())
            (grad,) = torch.autograd.grad(value.sum(), logps)
            assert bool(torch.isfinite(grad.float()).all())


# =========================================================================== exact solvers

def scaled_problem(reward_scale, seed=0):
    """(3, 4) problem with a Dirichlet reference, non-uniform ρ and rewards rescaled to max |r| = reward_scale."""
    base = make_problem(3, 4, seed=seed, ref="dirichlet")
    rewards = base.rewards / np.abs(base.rewards).max() * reward_scale
    return TabularProblem(rewards, base.ref_policy, np.array([0.5, 0.3, 0.2]))


def scaled_stationarity(problem, loss, params, logits):
    """max_i |∂L/∂z_i| / |∂²L/∂z_i²| from autograd of the per-sample losses: the remaining error of each logit.

    Coordinates float64 cannot improve are skipped: a diagonal below 1e-30 (a probability that
    underflowed) or a gradient at round-off level for the objective's scale (Σ W = 1, plus β or λ).
    """
    z = torch.tensor(logits, dtype=torch.float64)
    f = lambda flat: population_loss(problem, loss, params, flat.reshape(z.shape))
    flat = z.reshape(-1).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(flat), flat)
    diag = torch.autograd.functional.hessian(f, z.reshape(-1)).diagonal().abs()
    roundoff = 64 * np.finfo(float).eps * max(1.0, params.get("beta", 0.0), params.get("lam", 0.0))
    informative = (diag > 1e-30) & (g.abs() > roundoff)
    return float((g.abs()[informative] / diag[informative]).max()) if bool(informative.any()) else 0.0


def solve_quietly(call):
    """(result, the warnings it raised) without printing them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [w for w in caught]


def assert_finite_and_honest(res, caught):
    """Finite numbers; a warning iff the status is not 'converged', and of the class matching the status."""
    assert np.all(np.isfinite(res.policy)) and np.all(np.isfinite(res.logits)), res.message
    assert np.isfinite(res.loss) and np.isfinite(res.grad_norm), res.message
    assert np.all(res.policy >= 0) and np.allclose(res.policy.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert res.status in ("converged", "not_unique", "no_finite_minimizer", "max_iter")
    assert res.converged == (res.status in ("converged", "not_unique"))
    categories = {w.category for w in caught}
    foreign = [w for w in caught if not issubclass(w.category, tuple(WARNING_OF.values()))]
    assert not foreign, [str(w.message) for w in foreign]          # no numpy/torch overflow warnings
    if res.status == "converged":
        assert not categories, res.message
    else:
        assert WARNING_OF[res.status] in categories and res.message


ORACLE_TOL = 1e-8        # max TV to the closed form
STATIONARY_TOL = 1e-8    # scaled gradient from autograd


def _cases():
    for scale in (1.0, 1e3):
        for alpha in EXTREMES:
            yield scale, "spo", {"alpha": alpha, "beta": 0.0}
            for k in (3, 4):
                yield scale, "spo_best_of_n" if k == 3 else "spo_ranked", {"alpha": alpha, "beta": 0.0, "k": k}
            for beta in EXTREMES:
                yield scale, "spo", {"alpha": alpha, "beta": beta}
                yield scale, "spo_best_of_n", {"alpha": alpha, "beta": beta, "k": 3}
                yield scale, "spo_ranked", {"alpha": alpha, "beta": beta, "k": 3}
                yield scale, "cpo", {"beta": alpha, "lam": beta}
            yield scale, "spo", {"alpha": alpha, "beta": 0.0, "weights": "ones"}     # μ = 1 given explicitly
        for strength in EXTREMES:
            yield scale, "dpo", {"beta": strength}
            yield scale, "hinge", {"beta": strength}
            yield scale, "rlhf", {"beta": strength}
            yield scale, "ipo", {"tau": strength}


# Population objectives whose pair / Luce masses underflow to 0 (reward gaps beyond ~745) while the
# answer they determine is visible: the known solver failures pinned at the end of this file.
KNOWN: dict = {}   # (scale, loss, params) -> name of a strict-xfail test; empty: every case passes


def _case_id(scale, loss, params):
    return f"r{scale:g}-{loss}-" + "-".join(f"{k}{v}" if isinstance(v, str) else f"{k}{v:g}" for k, v in params.items())


CASES = [pytest.param(s, l, p, id=_case_id(s, l, p),
                      marks=[pytest.mark.xfail(strict=True, reason=f"known solver failure, see {KNOWN[key]}")]
                      if (key := (s, l, tuple(p.items()))) in KNOWN else [])
         for s, l, p in _cases()]


@pytest.mark.parametrize("scale, loss, params", CASES)
def test_population_solvers_at_the_extremes_are_finite_and_honest(scale, loss, params):
    problem = scaled_problem(scale)
    if params.get("weights") == "ones":
        params = {**params, "weights": np.ones((3, 4, 4))}
    if loss == "rlhf":
        res, caught = solve_quietly(lambda: solve_rlhf(problem, **params))
    else:
        res, caught = solve_quietly(lambda: solve_exact(problem, loss=loss, **params))
    assert_finite_and_honest(res, caught)
    if not res.converged:
        return                                   # reported, with its warning: nothing is claimed
    oracle_params = {k: v for k, v in params.items()
                     if not (k == "beta" and v == 0.0 and loss.startswith("spo")) and k != "weights"}
    if loss == "hinge":
        cert = hinge_certificate(problem, params["beta"], res.logits)
        assert abs(cert["primal"] - cert["dual"]) <= 1e-9 * max(1.0, abs(cert["primal"])) and cert["violation"] <= 1e-9
    elif loss in ("cpo",) or params.get("beta", 0.0) > 0 and loss.startswith("spo"):
        assert scaled_stationarity(problem, loss, params, res.logits) <= STATIONARY_TOL, res.message
    else:
        target = oracle_policy(problem, loss=loss, **oracle_params)
        assert tv(res.policy, target).max() <= ORACLE_TOL, res.message


@pytest.mark.parametrize("alpha", [1e-3, 1e3])
@pytest.mark.parametrize("sampler", ["uniform", "ref"])
def test_theorem1_holds_at_the_extremes(alpha, sampler):
    report = check_theorem1(scaled_problem(1e3), alpha=alpha, sampler=sampler)
    assert report.passed and report.max_tv <= 1e-9 and np.isfinite(report.kl_to_target)


def empirical_spo(problem, data, alpha, beta, logits):
    """(1/N) Σ_s spo_loss + β Σ_x ρ_x KL, from the per-sample loss (independent of objectives.py)."""
    logp = torch.log_softmax(logits, dim=-1)
    ctx = torch.from_numpy(np.array(data.ctx))
    per = spo_loss(logp[ctx, torch.from_numpy(np.array(data.chosen))],
                   logp[ctx, torch.from_numpy(np.array(data.rejected))], alpha=alpha)
    kl_ = (logp.exp() * (logp - torch.tensor(problem.log_ref))).sum(dim=-1)
    return per.mean() + beta * (torch.tensor(problem.context_probs) * kl_).sum()


@pytest.mark.parametrize("alpha, beta", list(itertools.product(EXTREMES, (1e-3, 1e3))))
def test_spo_on_data_at_the_extremes_is_stationary_when_it_says_so(alpha, beta):
    problem = scaled_problem(3.0)
    data = sample_pairs(problem, 3000, seed=1)
    res, caught = solve_quietly(lambda: solve_exact(problem, alpha=alpha, beta=beta, data=data))
    assert_finite_and_honest(res, caught)
    if res.converged:
        z = torch.tensor(res.logits, requires_grad=True)
        (g,) = torch.autograd.grad(empirical_spo(problem, data, alpha, beta, z), z)
        H = torch.autograd.functional.hessian(lambda flat: empirical_spo(problem, data, alpha, beta, flat.reshape(3, 4)),
                                              z.detach().reshape(-1))
        diag = H.diagonal().abs().reshape(3, 4)
        assert float((g.abs() / diag.clamp(min=1e-30)).max()) <= STATIONARY_TOL


@pytest.mark.parametrize("loss, params", [("spo", {"alpha": 1e-3}), ("spo", {"alpha": 1e3}), ("dpo", {"beta": 1e3}),
                                          ("cpo", {"beta": 1.0, "lam": 0.0})])
def test_unanimous_data_from_huge_rewards_is_reported_not_solved(loss, params):
    """Rewards ±1e3 make every label deterministic: the beats graph is acyclic, so with no KL term there
    is no finite minimiser. The solver must say so (status, warning), with finite numbers."""
    problem = scaled_problem(1e3)
    data = sample_pairs(problem, 2000, seed=2)
    assert np.all(problem.rewards[data.ctx, data.chosen] > problem.rewards[data.ctx, data.rejected])
    res, caught = solve_quietly(lambda: solve_exact(problem, loss=loss, data=data, **params))
    assert_finite_and_honest(res, caught)
    assert res.status == "no_finite_minimizer" and not res.converged


def test_unanimous_best_of_n_data_is_reported_and_a_kl_term_makes_it_solvable():
    problem = scaled_problem(1e3)
    data = sample_best_of_n(problem, 1000, 3, seed=3)
    res, caught = solve_quietly(lambda: solve_exact(problem, loss="spo_best_of_n", alpha=1.0, data=data))
    assert_finite_and_honest(res, caught)
    assert res.status == "no_finite_minimizer"
    res, caught = solve_quietly(lambda: solve_exact(problem, loss="spo_best_of_n", alpha=1.0, beta=1e-3, data=data))
    assert_finite_and_honest(res, caught)
    assert res.status == "converged"


def test_low_precision_problem_tables_solve_like_their_float64_values():
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.25]], dtype=torch.bfloat16)
    ref = np.array([[0.125, 0.25, 0.5, 0.125]], dtype=np.float16)
    low = solve_exact(TabularProblem(rewards, ref), alpha=0.5, beta=0.25)
    high = solve_exact(TabularProblem(rewards.double().numpy(), ref.astype(np.float64)), alpha=0.5, beta=0.25)
    assert low.logits.dtype == np.float64 and np.array_equal(low.logits, high.logits)


# =========================================================================== metrics

def test_metrics_stay_finite_on_nearly_deterministic_policies():
    p = np.array([[1.0 - 1e-300, 1e-300, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[1e-300, 1.0 - 1e-300, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.all(np.isfinite(tv(p, q))) and np.all(np.isfinite(kl(p, q))) and np.all(np.isfinite(entropy(p)))
    assert kl(p, q)[1] == pytest.approx(np.log(3.0), rel=1e-15) and entropy(p)[1] == 0.0
    assert kl(p, q)[0] == pytest.approx(np.log(1.0 / 1e-300), rel=1e-12)
    # Support mismatch is +inf by definition (documented), never NaN.
    assert np.isposinf(kl(q, p)[1]) and np.isposinf(max_abs_log_ratio(q, p)[1])
    problem = scaled_problem(1e3)
    assert 0.0 <= win_rate(problem, problem.target(1e-3), problem.ref_policy) <= 1.0


# =========================================================================== solver failures this catalogue found, now fixed

def test_dpo_population_with_a_reward_gap_beyond_745():
    problem = TabularProblem(np.array([[0.0, 1000.0]]))
    res = solve_exact(problem, loss="dpo", beta=1000.0)
    target = oracle_policy(problem, loss="dpo", beta=1000.0)           # π_ref e^{r/β}/Z = (0.269, 0.731)
    assert not res.converged or tv(res.policy, target).max() <= 1e-9


def test_spo_with_a_sharp_alpha_and_a_strong_kl_converges():
    # Once a strict xfail: at α = 1e3 the pair (1, 3) has W_13/W_31 ~ 1e-195, so the preference term is a
    # wall 1/α = 1e-3 wide with the minimiser on it, and Newton took its 0.05-nat steps across the wall
    # untested, back and forth, raising the objective, for all 100 iterations. Reference: SciPy's
    # trust-region Newton (trust-exact) on the autograd gradient and Hessian of the per-sample losses.
    problem = TabularProblem(np.array([[-411.0, 277.0, 1000.0, 726.0]]), np.array([[0.23, 0.15, 0.48, 0.14]]))
    params = {"alpha": 1e3, "beta": 10.0}
    res = solve_exact(problem, **params)
    assert res.converged
    assert scaled_stationarity(problem, "spo", params, res.logits) <= STATIONARY_TOL

    def f(x):
        z = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        loss = population_loss(problem, "spo", params, z.reshape(1, 4))
        return float(loss.detach()), torch.autograd.grad(loss, z)[0].numpy()

    def hess(x):
        return torch.autograd.functional.hessian(
            lambda z: population_loss(problem, "spo", params, z.reshape(1, 4)), torch.tensor(x)).numpy()

    ref = scipy.optimize.minimize(f, np.log(problem.ref_policy[0]), jac=True, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-12})
    assert ref.success
    assert abs(res.loss - ref.fun) <= 1e-12 * ref.fun
    assert tv(res.policy, scipy.special.softmax(ref.x)[None]).max() <= 1e-9


def test_best_of_n_population_with_a_reward_gap_beyond_745():
    problem = TabularProblem(np.array([[0.0, 1000.0]]))
    res = solve_exact(problem, loss="spo_best_of_n", alpha=1e3, k=2)
    assert not res.converged or tv(res.policy, problem.target(1e3)).max() <= 1e-9     # (0.269, 0.731)


def test_weighted_spo_population_with_a_reward_gap_beyond_745():
    problem = TabularProblem(np.array([[0.0, 1000.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_exact(problem, alpha=1.0, weights=np.ones((1, 2, 2)))
    assert np.all(np.isfinite(res.policy))
    assert not res.converged or tv(res.policy, problem.target(1.0)).max() <= 1e-9
