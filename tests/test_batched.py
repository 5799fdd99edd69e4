"""solve_exact_batched: stacking problems on the context axis gives each one's own solve_exact answer."""
import warnings

import numpy as np
import pytest

from spo_tabular import PairData, TabularProblem, make_problem, sample_pairs, solve_exact
from spo_tabular.metrics import tv
from spo_tabular.solvers.batched import solve_exact_batched
from spo_tabular.solvers.exact import NoFiniteMinimizerWarning, NonUniqueMinimizerWarning
from spo_tabular.preferences import covered_pair_probs, pairs_mask


def _same(a, b, tol=1e-10):
    assert a.status == b.status
    assert tv(a.policy, b.policy).max() < tol
    assert a.loss == pytest.approx(b.loss, rel=1e-9, abs=1e-12)


def test_alpha_times_seed_sweep_on_data_matches_separate_solves():
    problems = [make_problem(3, 5, seed=s) for s in range(3)]
    datas = [sample_pairs(p, 800, seed=10 + s) for s, p in enumerate(problems)]
    alphas = [0.3, 1.0, 3.0]
    configs = [(p, d, a) for p, d in zip(problems, datas) for a in alphas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        batched = solve_exact_batched([c[0] for c in configs], alpha=[c[2] for c in configs],
                                      data=[c[1] for c in configs])
        for (p, d, a), res in zip(configs, batched):
            _same(res, solve_exact(p, alpha=a, data=d))


def test_kl_term_keeps_each_problems_context_probs():
    """With β > 0 and non-uniform ρ, stacking must not renormalise ρ: each problem's objective is unchanged."""
    rng = np.random.default_rng(0)
    problems = [TabularProblem(rng.standard_normal((m, 4)), rng.dirichlet(np.ones(4) * 3, size=m),
                               rng.dirichlet(np.ones(m))) for m in (1, 3, 5)]
    betas = [0.05, 0.5, 5.0]
    batched = solve_exact_batched(problems, alpha=0.8, beta=betas)
    for p, b, res in zip(problems, betas, batched):
        _same(res, solve_exact(p, alpha=0.8, beta=b))
        assert res.policy.shape == (p.n_contexts, 4)


def test_one_problem_many_betas_traces_the_regularisation_path():
    problem = make_problem(2, 4, seed=4, ref="dirichlet")
    betas = np.logspace(-3, 3, 7)
    path = solve_exact_batched(problem, alpha=1.0, beta=betas)
    assert len(path) == 7
    assert tv(path[0].policy, problem.target(1.0)).max() < 1e-2
    assert tv(path[-1].policy, problem.ref_policy).max() < 1e-2
    for b, res in zip(betas, path):
        _same(res, solve_exact(problem, alpha=1.0, beta=float(b)))


def test_no_finite_minimiser_and_not_unique_are_reported_per_problem():
    unanimous = TabularProblem(np.zeros((1, 3)))
    one_way = PairData(np.zeros(2, int), np.array([0, 1]), np.array([1, 2]), 1, 3)
    fine = make_problem(1, 3, seed=0)
    fine_data = sample_pairs(fine, 500, seed=1)
    split = make_problem(1, 4, seed=2)
    q = covered_pair_probs(split, pairs_mask(4, [(0, 1), (2, 3)]))
    with pytest.warns(NoFiniteMinimizerWarning, match="2 of 3"):
        res = solve_exact_batched([unanimous, fine, unanimous], alpha=[1.0, 1.0, 2.0],
                                  data=[one_way, fine_data, one_way])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for r, (p, d, a) in zip(res, [(unanimous, one_way, 1.0), (fine, fine_data, 1.0), (unanimous, one_way, 2.0)]):
            _same(r, solve_exact(p, alpha=a, data=d))
    assert [r.status for r in res] == ["no_finite_minimizer", "converged", "no_finite_minimizer"]
    with pytest.warns(NonUniqueMinimizerWarning):
        res = solve_exact_batched(split, alpha=[0.5, 1.0], sampler=q)
    assert {r.status for r in res} == {"not_unique"}


def test_single_configuration():
    problem = make_problem(2, 3, seed=0)
    (res,) = solve_exact_batched(problem, alpha=1.0)
    _same(res, solve_exact(problem, alpha=1.0))


def test_bad_inputs():
    a, b = make_problem(2, 3, seed=0), make_problem(2, 4, seed=0)
    with pytest.raises(ValueError, match="same n_actions"):
        solve_exact_batched([a, b], alpha=1.0)
    with pytest.raises(ValueError, match="one length"):
        solve_exact_batched([a, a], alpha=[1.0, 2.0, 3.0], beta=[0.0, 0.1])
    with pytest.raises(ValueError, match="alpha"):
        solve_exact_batched([a, a], alpha=[1.0, -2.0])
    with pytest.raises(ValueError, match="beta"):
        solve_exact_batched(a, alpha=1.0, beta=-1.0)
    with pytest.raises(TypeError, match="problems"):
        solve_exact_batched([a, "b"], alpha=1.0)
    with pytest.raises(ValueError, match="problems must not be empty"):
        solve_exact_batched([], alpha=1.0)
    with pytest.raises(TypeError, match="data"):
        solve_exact_batched(a, alpha=1.0, data=np.zeros(3))
    with pytest.raises(ValueError, match="one length"):
        solve_exact_batched([a, a], alpha=1.0, sampler=["uniform"])


def test_large_beta_converges_to_a_stationary_point_near_ref():
    """β = 1000: the minimiser is within O(1/β) of π_ref; the gradient of SPEC §5 vanishes there."""
    import torch
    from spo_tabular import pair_mass
    from spo_tabular.objectives import SPOObjective
    problem = make_problem(3, 4, seed=2440950710608614359, ref="dirichlet")
    res = solve_exact_batched(problem, alpha=1.0, beta=[100.0, 1000.0])
    assert [r.status for r in res] == ["converged", "converged"]
    for beta, r in zip((100.0, 1000.0), res):
        obj = SPOObjective(pair_mass(problem), alpha=1.0, beta=beta, log_ref=problem.log_ref,
                           context_probs=problem.context_probs)
        assert float(obj.grad(torch.as_tensor(r.logits)).abs().max()) < 1e-12
        assert tv(r.policy, problem.ref_policy).max() < 1.0 / beta
