"""solve_sgd: the gradient solver lands on the exact empirical minimisers, reproducibly."""
import math
import warnings

import numpy as np
import pytest
import torch

from spo_tabular import PairData, TabularProblem, make_problem, sample_pairs, solve_exact
from spo_tabular.metrics import tv
from spo_tabular.objectives import SPOObjective
from spo_tabular.solvers.exact import ConvergenceWarning, NoFiniteMinimizerWarning
from spo_tabular.solvers.sgd import HISTORY_COLUMNS, aggregate_pairs, make_pair_loss, solve_sgd


@pytest.fixture(scope="module")
def small():
    problem = make_problem(3, 4, seed=1)
    return problem, sample_pairs(problem, 2000, seed=2)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_default_settings_reach_the_exact_empirical_minimiser(small, beta):
    problem, data = small
    exact = solve_exact(problem, alpha=0.7, beta=beta, data=data)
    res = solve_sgd(problem, data, alpha=0.7, beta=beta, quiet=True)
    assert res.converged and res.status == "converged"
    assert tv(res.policy, exact.policy).max() <= 1e-3
    assert tv(res.policy, exact.policy).max() <= 1e-8        # in fact to round-off
    assert res.loss == pytest.approx(exact.loss, rel=1e-9)


def test_history_columns_and_values(small):
    problem, data = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_sgd(problem, data, alpha=0.7, beta=0.1, steps=200, log_every=20, quiet=True)
    h = res.history
    assert tuple(h.columns) == HISTORY_COLUMNS
    assert h["step"].tolist() == list(range(0, 201, 20))
    # Step 0 is the uniform reference: every margin is 0, so the loss is log 2 / α and KL is 0.
    assert h["loss"].iloc[0] == pytest.approx(math.log(2) / 0.7, rel=1e-12)
    assert h["kl_to_ref"].iloc[0] == pytest.approx(0.0, abs=1e-15)
    assert h["entropy"].iloc[0] == pytest.approx(math.log(4), rel=1e-12)
    assert h["loss"].iloc[-1] == pytest.approx(res.loss, rel=1e-12)
    assert h["tv_to_target"].iloc[-1] == pytest.approx(tv(res.policy, problem.target(0.7)).max(), rel=1e-9)
    assert h["loss"].iloc[-1] < h["loss"].iloc[0]


def test_full_objective_gradient_matches_the_closed_form_of_spec5(small):
    """The final gradient is that of L(z) = −(1/α) Σ W log σ(α(z_i − z_j)) + β Σ ρ KL (SPOObjective)."""
    problem, data = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_sgd(problem, data, alpha=0.7, beta=0.3, steps=5, quiet=True)
    obj = SPOObjective(data.pair_mass(), alpha=0.7, beta=0.3, log_ref=problem.log_ref,
                       context_probs=problem.context_probs)
    z = torch.as_tensor(res.logits)
    assert res.grad_norm == pytest.approx(float(obj.grad(z).abs().max()), rel=1e-9)
    assert res.loss == pytest.approx(obj.value(z), rel=1e-12)


def test_same_seed_same_numbers_and_another_seed_differs(small):
    problem, data = small
    kw = dict(alpha=0.7, batch_size=64, steps=300, lr=0.02, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = solve_sgd(problem, data, seed=5, **kw)
        b = solve_sgd(problem, data, seed=5, **kw)
        c = solve_sgd(problem, data, seed=6, **kw)
        d = solve_sgd(problem, data, seed=np.random.SeedSequence(5), **kw)
        e = solve_sgd(problem, data, seed=np.random.SeedSequence(5), **kw)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.history.equals(b.history)
    assert not np.array_equal(a.logits, c.logits)
    np.testing.assert_array_equal(d.logits, e.logits)


def test_minibatch_sgd_approaches_the_exact_minimiser(small):
    problem, data = small
    exact = solve_exact(problem, alpha=0.7, data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # stochastic: the gradient never reaches 1e-6
        res = solve_sgd(problem, data, alpha=0.7, batch_size=256, steps=2000, lr=0.02, seed=0, quiet=True)
    start = tv(problem.ref_policy, exact.policy).max()
    assert tv(res.policy, exact.policy).max() < 0.05 * start


def test_dpo_minimiser_is_ref_times_the_spo_minimiser_with_alpha_equal_beta():
    """DPO: β(g_i − g_j) fits the BT log-odds θ̂, so π ∝ π_ref·exp(θ̂/β) = π_ref ⊙ softmax(θ̂/β) (SPEC §6)."""
    problem = make_problem(2, 4, seed=3, ref="dirichlet")
    data = sample_pairs(problem, 3000, seed=4)
    spo = solve_exact(TabularProblem(problem.rewards), alpha=0.5, data=data)
    expected = problem.ref_policy * spo.policy
    expected /= expected.sum(axis=1, keepdims=True)
    res = solve_sgd(problem, data, loss="dpo", beta=0.5, quiet=True)
    assert res.converged
    assert tv(res.policy, expected).max() < 1e-8


def test_ipo_minimiser_solves_the_least_squares_system():
    """IPO: g = log π − log π_ref minimises Σ_k (g_chosen − g_rejected − 1/(2τ))², a linear least-squares fit."""
    problem = make_problem(1, 4, seed=5, ref="dirichlet")
    data = sample_pairs(problem, 500, seed=6)
    tau = 0.4
    A = np.zeros((len(data), 4))
    A[np.arange(len(data)), data.chosen] += 1.0
    A[np.arange(len(data)), data.rejected] -= 1.0
    g = np.linalg.lstsq(A, np.full(len(data), 1 / (2 * tau)), rcond=None)[0]
    expected = problem.ref_policy[0] * np.exp(g)
    expected /= expected.sum()
    res = solve_sgd(problem, data, loss="ipo", tau=tau, quiet=True)
    assert res.converged
    assert tv(res.policy, expected[None]).max() < 1e-8


def test_kl_weight_adds_the_exact_global_kl_to_any_loss(small):
    """DPO + 0.5 Σ ρ KL: at the answer the gradient of that total objective (autograd here) vanishes."""
    problem, data = small
    res = solve_sgd(problem, data, loss="dpo", beta=1.0, kl_weight=0.5, quiet=True)
    assert res.converged
    z = torch.tensor(res.logits, requires_grad=True)
    logp = torch.log_softmax(z, dim=-1)
    ref = torch.as_tensor(problem.log_ref)
    ctx, c, r = (torch.as_tensor(np.array(a)) for a in (data.ctx, data.chosen, data.rejected))
    h = (logp[ctx, c] - ref[ctx, c]) - (logp[ctx, r] - ref[ctx, r])
    kl = (logp.exp() * (logp - ref)).sum(dim=1)
    total = -torch.nn.functional.logsigmoid(h).mean() + 0.5 * (torch.tensor(problem.context_probs) * kl).sum()
    total.backward()
    assert float(z.grad.abs().max()) < 1e-9
    plain = solve_sgd(problem, data, loss="dpo", beta=1.0, quiet=True)
    assert tv(res.policy, plain.policy).max() > 1e-3            # the KL term moved the answer
    same = solve_sgd(problem, data, alpha=0.7, kl_weight=0.1, quiet=True)
    np.testing.assert_array_equal(same.logits, solve_sgd(problem, data, alpha=0.7, beta=0.1, quiet=True).logits)


@pytest.mark.parametrize("loss, kw", [("hinge", dict(beta=1.0)), ("cpo", dict(beta=1.0, lam=0.1))])
def test_other_pairwise_losses_decrease_their_objective(small, loss, kw):
    problem, data = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_sgd(problem, data, loss=loss, steps=200, quiet=True, **kw)
    assert np.all(np.isfinite(res.logits))
    assert res.history["loss"].iloc[-1] < res.history["loss"].iloc[0]


def test_a_duplicated_pair_equals_weight_two():
    problem = make_problem(1, 3, seed=0)
    base = sample_pairs(problem, 200, seed=1)
    dup = PairData(np.r_[base.ctx, base.ctx[:50]], np.r_[base.chosen, base.chosen[:50]],
                   np.r_[base.rejected, base.rejected[:50]], 1, 3)
    weights = np.ones(200)
    weights[:50] = 2.0
    a = solve_sgd(problem, dup, alpha=1.0, quiet=True)
    # The weighted objective is normalised by N = 200 instead of 250: the same minimiser.
    b = solve_sgd(problem, base, alpha=1.0, weights=weights, quiet=True)
    assert tv(a.policy, b.policy).max() < 1e-8


def test_aggregate_pairs_counts_distinct_triples():
    data = PairData(np.array([0, 0, 1, 0]), np.array([1, 1, 0, 2]), np.array([0, 0, 2, 1]), 2, 3)
    c, r, mass = aggregate_pairs(data)
    # (0,1,0) twice, (0,2,1) once, (1,0,2) once; flat table index = ctx·n + action.
    assert c.tolist() == [1, 2, 3] and r.tolist() == [0, 1, 5]
    np.testing.assert_allclose(mass, [0.5, 0.25, 0.25])


def test_unanimous_data_without_kl_warns_no_finite_minimiser_and_kl_keeps_it_finite():
    problem = TabularProblem(np.zeros((1, 3)))
    data = PairData(np.zeros(3, int), np.array([0, 1, 0]), np.array([1, 2, 2]), 1, 3)   # a ≻ b ≻ c
    with pytest.warns(NoFiniteMinimizerWarning):
        res = solve_sgd(problem, data, alpha=1.0, quiet=True)
    assert res.status == "no_finite_minimizer" and not res.converged
    exact = solve_exact(problem, alpha=1.0, beta=0.5, data=data)
    kept = solve_sgd(problem, data, alpha=1.0, beta=0.5, quiet=True)
    assert kept.converged and tv(kept.policy, exact.policy).max() < 1e-8
    assert kept.policy.min() > 0.01 > res.policy.min()      # the KL term keeps c's probability finite


def test_callback_stops_early(small):
    problem, data = small
    res = solve_sgd(problem, data, alpha=0.7, log_every=10, quiet=True,
                    callback=lambda step, logits: step >= 30)
    assert res.status == "stopped" and res.n_iter == 30


def test_float32_runs_close_to_float64(small):
    problem, data = small
    exact = solve_exact(problem, alpha=0.7, data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_sgd(problem, data, alpha=0.7, dtype=torch.float32, quiet=True)
    assert res.logits.dtype == np.float64
    assert tv(res.policy, exact.policy).max() < 1e-4


def test_make_pair_loss_routes_beta():
    f, kl_weight = make_pair_loss("spo", alpha=2.0, beta=0.3)
    assert kl_weight == 0.3
    lc, lr = torch.tensor([math.log(0.6)]), torch.tensor([math.log(0.4)])
    expected = -math.log(1 / (1 + (0.4 / 0.6) ** 2.0)) / 2.0
    assert float(f(lc, lr, None, None)) == pytest.approx(expected, rel=1e-6)
    f, kl_weight = make_pair_loss("dpo", beta=0.3)
    assert kl_weight == 0.0
    zero = torch.zeros(1)
    assert float(f(zero, zero, zero, zero)) == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(loss="nope"), ValueError, "loss must be one of"),
    (dict(loss="spo_best_of_n"), ValueError, "loss must be one of"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(beta=-1.0), ValueError, "beta"),
    (dict(loss="dpo", beta=0.0), ValueError, "beta"),
    (dict(loss="ipo", tau=-1.0), ValueError, "tau"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer must be one of"),
    (dict(schedule="step"), ValueError, "schedule must be one of"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(final_lr=2.0), ValueError, "final_lr"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=1.5), TypeError, "steps"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(log_every=0), ValueError, "log_every"),
    (dict(seed=None, batch_size=4), TypeError, "seed"),
    (dict(seed=-1, batch_size=4), ValueError, "seed"),
    (dict(weights=-np.ones(2000)), ValueError, "weights"),
    (dict(weights=np.ones(3)), ValueError, "weights"),
    (dict(init=np.zeros((2, 2))), ValueError, "init"),
    (dict(target=np.zeros(4)), ValueError, "target"),
    (dict(callback=3), TypeError, "callback"),
    (dict(kl_weight=-0.1), ValueError, "kl_weight"),
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(dtype=torch.int64), ValueError, "dtype"),
])
def test_bad_inputs_name_the_argument(small, kwargs, exc, match):
    problem, data = small
    with pytest.raises(exc, match=match):
        solve_sgd(problem, data, quiet=True, **kwargs)


def test_bad_problem_or_data():
    problem = make_problem(3, 4, seed=1)
    data = sample_pairs(problem, 10, seed=2)
    with pytest.raises(TypeError, match="problem"):
        solve_sgd("x", data)
    with pytest.raises(TypeError, match="data"):
        solve_sgd(problem, np.zeros(3))
    with pytest.raises(ValueError, match="n_contexts, n_actions"):
        solve_sgd(make_problem(2, 4, seed=1), data)
