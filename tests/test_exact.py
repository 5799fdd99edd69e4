"""The exact solver: Theorem 1 to machine precision, β > 0 stationarity and limits, finite data, existence."""
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp

from spo_tabular import (PairData, TabularProblem, bradley_terry, make_problem, pair_mass, sample_pairs,
                         soft_optimal_policy, solve_exact)
from spo_tabular.objectives import SPOObjective
from spo_tabular.solvers.exact import NoFiniteMinimizerWarning, NonUniqueMinimizerWarning


def max_tv(p, q):
    return float(0.5 * np.abs(p - q).sum(1).max())


@settings(max_examples=40)
@given(m=st.integers(1, 4), n=st.integers(2, 7), seed=st.integers(0, 2**31 - 1),
       alpha=st.floats(0.05, 20.0), scale=st.floats(0.0, 3.0),
       sampler=st.sampled_from(["uniform", "ref"]), ref=st.sampled_from(["uniform", "dirichlet"]))
def test_theorem1_minimiser_is_softmax_r_over_alpha(m, n, seed, alpha, scale, sampler, ref):
    p = make_problem(m, n, seed=seed, reward_scale=scale, ref=ref)
    res = solve_exact(p, alpha=alpha, sampler=sampler)
    assert res.converged and res.status == "converged"
    assert max_tv(res.policy, soft_optimal_policy(p.rewards, alpha)) <= 1e-12
    assert res.grad_norm <= 1e-12


def test_theorem1_at_benchmark_size():
    p = make_problem(256, 64, seed=0)
    res = solve_exact(p, alpha=0.7)
    assert max_tv(res.policy, soft_optimal_policy(p.rewards, 0.7)) <= 1e-12
    assert res.grad_norm <= 1e-12


def test_two_actions_by_hand_with_kl():
    # m=1, n=2, uniform ref, d = z1 − z2. L = −(1/α)[W12 log σ(αd) + W21 log σ(−αd)] + β KL.
    # Stationarity: −W12 σ(−αd) + W21 σ(αd) + β ∂KL/∂d = 0 with π1 = σ(d); solve the 1-d equation.
    r = np.array([[0.8, -0.4]])
    alpha, beta = 0.6, 0.7
    p = TabularProblem(r)
    W = pair_mass(p)
    sig = lambda t: 1 / (1 + np.exp(-t))

    def dL(d):
        p1 = sig(d)
        dkl = p1 * (1 - p1) * d          # d/dd KL(Bern(σ(d)) ‖ Bern(½)) = p(1−p)(log p − log(1−p)) = p(1−p)d
        return -W[0, 0, 1] * sig(-alpha * d) + W[0, 1, 0] * sig(alpha * d) + beta * dkl
    d_star = scipy.optimize.brentq(dL, -20, 20, xtol=1e-15)
    res = solve_exact(p, alpha=alpha, beta=beta)
    assert res.policy[0, 0] == pytest.approx(sig(d_star), abs=1e-13)


@pytest.mark.parametrize("seed", [0, 1])
def test_beta_positive_is_stationary_by_independent_autograd(seed):
    p = make_problem(5, 6, seed=seed, ref="dirichlet", reward_scale=2.0)
    alpha, beta = 0.5, 0.3
    res = solve_exact(p, alpha=alpha, beta=beta)
    W = torch.as_tensor(pair_mass(p))
    z = torch.tensor(res.logits, requires_grad=True)
    d = z[:, :, None] - z[:, None, :]
    logp = torch.log_softmax(z, -1)
    L = -(W * torch.nn.functional.logsigmoid(alpha * d)).sum() / alpha + beta * (
        torch.tensor(p.context_probs) * (logp.exp() * (logp - torch.tensor(p.log_ref))).sum(-1)).sum()
    (g,) = torch.autograd.grad(L, z)
    scale = float((W.sum((1, 2)).max()))
    assert float(g.abs().max()) <= 1e-13 * max(scale, 1.0)
    assert res.converged and res.grad_norm <= 1e-12


def test_beta_limits_softmax_and_ref():
    p = make_problem(4, 5, seed=3, ref="dirichlet")
    target = soft_optimal_policy(p.rewards, 0.8)
    dist_target = [max_tv(solve_exact(p, alpha=0.8, beta=b).policy, target) for b in (1e-2, 1e-4, 1e-6)]
    assert dist_target[0] > dist_target[1] > dist_target[2] and dist_target[2] < 1e-5
    dist_ref = [max_tv(solve_exact(p, alpha=0.8, beta=b).policy, p.ref_policy) for b in (1e1, 1e3, 1e5)]
    assert dist_ref[0] > dist_ref[1] > dist_ref[2] and dist_ref[2] < 1e-4


def _bt_mle(data, m, n):
    """Bradley–Terry MLE θ̂ per context by scipy BFGS on the log-likelihood (independent of our solver)."""
    theta = np.zeros((m, n))
    for x in range(m):
        sel = data.ctx == x
        w, l = data.chosen[sel], data.rejected[sel]

        def nll(t):
            t = np.concatenate([[0.0], t])
            d = t[w] - t[l]
            return np.sum(np.logaddexp(0.0, -d))

        def grad(t):
            t = np.concatenate([[0.0], t])
            s = 1 / (1 + np.exp(t[w] - t[l]))
            g = np.zeros(n)
            np.add.at(g, w, -s)
            np.add.at(g, l, s)
            return g[1:]
        r = scipy.optimize.minimize(nll, np.zeros(n - 1), jac=grad, method="BFGS", options={"gtol": 1e-11})
        theta[x] = np.concatenate([[0.0], r.x])
    return theta


@pytest.mark.parametrize("alpha", [0.3, 1.0, 3.0])
def test_finite_data_minimiser_is_softmax_of_bt_mle(alpha):
    p = make_problem(3, 5, seed=11)
    data = sample_pairs(p, 3000, seed=5)
    res = solve_exact(p, alpha=alpha, data=data)
    assert res.converged
    theta = _bt_mle(data, 3, 5)
    assert max_tv(res.policy, soft_optimal_policy(theta, alpha)) <= 1e-7   # limited by BFGS, not by us


def test_not_strongly_connected_data_is_reported():
    # Action 0 beats 1 and 2 but never loses: no finite minimiser with beta = 0.
    data = PairData(np.zeros(4, int), np.array([0, 0, 1, 2]), np.array([1, 2, 2, 1]), 1, 3)
    p = make_problem(1, 3, seed=0)
    with pytest.warns(NoFiniteMinimizerWarning, match="not strongly connected"):
        res = solve_exact(p, alpha=1.0, data=data)
    assert not res.converged and res.status == "no_finite_minimizer"
    assert np.all(np.isfinite(res.policy))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = solve_exact(p, alpha=1.0, beta=0.1, data=data)   # β > 0 always has a finite minimiser
    assert ok.converged and ok.policy[0, 0] > ok.policy[0, 1]


def test_disconnected_graph_is_non_unique_and_beta_selects_one():
    # Pairs {0,1} and {2,3} only: the mass between the two components is free.
    q = np.zeros((1, 4, 4))
    q[0, 0, 1] = q[0, 1, 0] = q[0, 2, 3] = q[0, 3, 2] = 0.25
    p = make_problem(1, 4, seed=2)
    with pytest.warns(NonUniqueMinimizerWarning):
        res = solve_exact(p, alpha=1.0, sampler=q)
    assert res.status == "not_unique" and res.converged
    r = p.rewards[0]
    # Within each component the ratio is still exp(Δr/α).
    assert np.log(res.policy[0, 0] / res.policy[0, 1]) == pytest.approx(r[0] - r[1], abs=1e-10)
    assert np.log(res.policy[0, 2] / res.policy[0, 3]) == pytest.approx(r[2] - r[3], abs=1e-10)
    unique = solve_exact(p, alpha=1.0, beta=0.05, sampler=q)
    assert unique.status == "converged"


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(alpha=float("inf")), ValueError, "alpha"),
    (dict(alpha="1"), TypeError, "alpha"),
    (dict(alpha=1.0, beta=-0.1), ValueError, "beta"),
    (dict(alpha=1.0, tol=0.0), ValueError, "tol"),
    (dict(alpha=1.0, max_iter=0), ValueError, "max_iter"),
    (dict(alpha=1.0, sampler="nope"), ValueError, "sampler"),
    (dict(alpha=1.0, data="pairs"), TypeError, "data"),
    (dict(alpha=1.0, weights=-np.ones((2, 3, 3))), ValueError, "weights"),
    (dict(alpha=1.0, weights=np.ones((2, 3))), ValueError, "weights"),
])
def test_solve_exact_rejects_bad_input(kwargs, exc, match):
    p = make_problem(2, 3, seed=0)
    with pytest.raises(exc, match=match):
        solve_exact(p, **kwargs)


def test_solve_exact_rejects_mismatched_data():
    p = make_problem(2, 3, seed=0)
    data = sample_pairs(make_problem(2, 4, seed=0), 10, seed=0)
    with pytest.raises(ValueError, match="n_actions"):
        solve_exact(p, alpha=1.0, data=data)
    with pytest.raises(TypeError, match="problem"):
        solve_exact(np.zeros((2, 3)), alpha=1.0)


def test_same_seed_same_bits():
    p = make_problem(6, 5, seed=9, ref="dirichlet")
    a = solve_exact(p, alpha=0.5, beta=0.2, data=sample_pairs(p, 500, seed=1))
    b = solve_exact(p, alpha=0.5, beta=0.2, data=sample_pairs(p, 500, seed=1))
    np.testing.assert_array_equal(a.policy, b.policy)


# ------------------------------------------------------------------ row blocks on an executor

def _uneven_problem(m, n, seed):
    """A make_problem with a non-uniform context distribution (the blocks' shares of the loss differ)."""
    p = make_problem(m, n, seed=seed, ref="dirichlet")
    rho = np.random.default_rng(seed).uniform(0.2, 5.0, m)
    return TabularProblem(rewards=p.rewards, ref_policy=p.ref_policy, context_probs=rho / rho.sum())


def _check_same_solve(p, executor, **options):
    """solve_exact(p, executor=...) against the one-piece solve and the objective evaluated afresh."""
    ref = solve_exact(p, **options)
    with executor as pool:
        res = solve_exact(p, executor=pool, **options)
    assert res.converged and res.status == "converged"
    assert f"row blocks, 1 on {type(executor).__name__}" in res.message
    assert np.abs(res.logits - ref.logits).max() <= 1e-10
    assert max_tv(res.policy, ref.policy) <= 1e-12
    # The merged loss and gradient norm against the objective evaluated afresh at the merged logits.
    W = pair_mass(p, sampler=options.get("sampler", "uniform"), preference=options.get("preference"))
    if options.get("weights") is not None:
        W = W * options["weights"]
    obj = SPOObjective(W, alpha=options["alpha"], beta=options["beta"], log_ref=p.log_ref,
                       context_probs=p.context_probs)
    z = torch.from_numpy(res.logits)
    assert res.loss == pytest.approx(obj.value(z), rel=1e-13)
    assert res.loss == pytest.approx(ref.loss, rel=1e-13)
    assert res.grad_norm <= 1e-14 and float(obj.grad(z).abs().max()) <= 1e-14


def test_an_executor_solves_row_blocks_to_the_same_minimiser():
    from concurrent.futures import ThreadPoolExecutor
    _check_same_solve(_uneven_problem(256, 12, seed=5), ThreadPoolExecutor(1), alpha=0.7, beta=0.3)


def test_an_executor_splits_per_context_arrays_by_row():
    # sampler, preference and weights arrays (m, n, n) go to each block as their rows.
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(6)
    other = make_problem(256, 5, seed=7, reward_scale=2.0)
    q = rng.uniform(0.5, 2.0, (256, 5, 5))
    q[:, np.arange(5), np.arange(5)] = 0.0
    _check_same_solve(_uneven_problem(256, 5, seed=6), ThreadPoolExecutor(1), alpha=1.3, beta=0.5,
                      sampler=q / q.sum(axis=(1, 2), keepdims=True), preference=bradley_terry(other.rewards),
                      weights=rng.uniform(0.5, 1.5, (256, 5, 5)))


def test_an_executor_of_worker_processes_gives_the_same_minimiser():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    _check_same_solve(_uneven_problem(256, 8, seed=8),
                      ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")), alpha=0.5, beta=0.1)


def test_an_executor_reports_a_block_that_did_not_converge():
    from concurrent.futures import ThreadPoolExecutor
    from spo_tabular.solvers.exact import ConvergenceWarning
    p = _uneven_problem(256, 8, seed=9)
    with ThreadPoolExecutor(1) as pool, pytest.warns(ConvergenceWarning, match="not converged in 2 of 2 row blocks"):
        res = solve_exact(p, alpha=0.7, beta=0.1, executor=pool, max_iter=1)
    assert not res.converged and res.status == "max_iter" and res.n_iter == 1
    assert np.all(np.isfinite(res.logits)) and res.policy.shape == (256, 8)


def test_an_executor_is_left_unused_where_one_block_or_the_closed_form_does():
    # Fewer than 256 contexts: one block; β = 0: the closed-form start. Both solve as without it.
    from concurrent.futures import Executor

    class Refuses(Executor):
        def submit(self, fn, /, *args, **kwargs):
            raise AssertionError("submit called")

    for p, beta in ((_uneven_problem(255, 6, seed=10), 0.1), (_uneven_problem(512, 6, seed=11), 0.0)):
        res, ref = solve_exact(p, alpha=0.7, beta=beta, executor=Refuses()), solve_exact(p, alpha=0.7, beta=beta)
        assert np.array_equal(res.logits, ref.logits) and res.message == ref.message
