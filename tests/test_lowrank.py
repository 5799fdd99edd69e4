"""Low-rank Newton systems (lowrank.py): the Chebyshev σ′ kernel against σ′ itself, Woodbury against a
dense solve, SPOObjective.kernel_hessian against autograd, and the solver's kernel steps against its
dense steps."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spo_tabular import TabularProblem, make_problem, pair_mass, solve_exact
from spo_tabular.lowrank import chebyshev_half_span, chebyshev_rank, sigmoid_kernel, woodbury_step
from spo_tabular.objectives import SPOObjective
from spo_tabular.solvers import exact as ex


def sigmoid_prime(u: np.ndarray) -> np.ndarray:
    """σ′(u) = e^{−|u|} / (1 + e^{−|u|})², computed independently of the package."""
    e = np.exp(-np.abs(u))
    return e / (1.0 + e) ** 2


def objective(m, n, seed, alpha=0.7, beta=0.1, scale=1.0):
    p = make_problem(m, n, seed=seed, ref="dirichlet")
    p = TabularProblem(rewards=scale * p.rewards, ref_policy=p.ref_policy, context_probs=p.context_probs)
    return SPOObjective(pair_mass(p), alpha=alpha, beta=beta, log_ref=p.log_ref, context_probs=p.context_probs,
                        uniform_shown=True)


# =========================================================================== the σ′ kernel

@pytest.mark.parametrize("half_span", [0.05, 0.5, 1.3, 2.5, 5.0, 12.0])
@pytest.mark.parametrize("tol", [1e-2, 1e-5, 1e-10])
def test_kernel_interpolation_meets_the_tolerance_its_rank_promises(half_span, tol):
    rng = np.random.default_rng(int(half_span * 100) + int(-math.log10(tol)))
    x = np.sort(rng.uniform(-1.0, 1.0, size=(3, 40)), axis=1)
    x = (x - x[:, :1]) / (x[:, -1:] - x[:, :1]) * 2 * half_span - half_span + rng.normal(size=(3, 1)) * 5
    k = chebyshev_rank(half_span, tol)
    Tt, A = sigmoid_kernel(torch.tensor(x), k)
    approx = (Tt.mT @ A @ Tt).numpy()
    exact = sigmoid_prime(x[:, :, None] - x[:, None, :])
    assert np.abs(approx - exact).max() <= tol * 0.25
    # A = C F Cᵀ with F a positive definite kernel's matrix: symmetric positive semi-definite.
    np.testing.assert_allclose(A.numpy(), A.mT.numpy(), atol=1e-15)
    assert float(torch.linalg.eigvalsh(A).min()) >= -1e-12


def test_kernel_rank_grows_with_the_span_and_the_accuracy():
    ranks = [chebyshev_rank(h, 1e-4) for h in (0.1, 1.0, 3.0, 10.0, 30.0)]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    assert chebyshev_rank(2.0, 1e-8) > chebyshev_rank(2.0, 1e-4) > chebyshev_rank(2.0, 1e-1)
    assert chebyshev_rank(0.0, 1e-4) >= 2                  # a single point: still a valid basis


@pytest.mark.parametrize("k", [2, 5, 9, 16, 40])
@pytest.mark.parametrize("tol", [1e-2, 1e-6])
def test_half_span_is_the_widest_that_the_rank_covers(k, tol):
    h = chebyshev_half_span(k, tol)
    assert chebyshev_rank(h * (1 - 1e-9), tol) <= k < chebyshev_rank(h * (1 + 1e-6), tol)


def test_a_constant_row_is_interpolated_exactly():
    x = torch.full((2, 5), 3.0, dtype=torch.float64)
    Tt, A = sigmoid_kernel(x, 4)
    torch.testing.assert_close(Tt.mT @ A @ Tt, torch.full((2, 5, 5), 0.25, dtype=torch.float64), rtol=0, atol=1e-14)


# =========================================================================== Woodbury

@settings(max_examples=30)
@given(m=st.integers(1, 4), n=st.integers(3, 12), r=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_woodbury_step_solves_the_dense_system(m, n, r, seed):
    rng = np.random.default_rng(seed)
    D = rng.uniform(0.5, 2.0, size=(m, n))
    Vt = rng.normal(size=(m, r, n))
    B = rng.normal(size=(m, r, r)) * 0.3
    G = B + B.transpose(0, 2, 1)                    # symmetric, indefinite in general
    g = rng.normal(size=(m, n))
    M = np.stack([np.diag(D[i]) + Vt[i].T @ G[i] @ Vt[i] for i in range(m)])
    if np.min(np.abs(np.linalg.eigvalsh(M))) < 1e-3:
        return                                      # nearly singular: no well-defined answer to compare
    expected = -np.linalg.solve(M, g[..., None])[..., 0]
    d, ok = woodbury_step(*(torch.tensor(a) for a in (g, D, Vt, G)))
    assert bool(ok.all())
    np.testing.assert_allclose(d.numpy(), expected, rtol=1e-8, atol=1e-8 * np.abs(expected).max())


def test_woodbury_step_flags_a_singular_diagonal():
    D = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 3.0]], dtype=torch.float64)
    Vt = torch.ones(2, 1, 3, dtype=torch.float64)
    G = torch.full((2, 1, 1), 0.5, dtype=torch.float64)
    d, ok = woodbury_step(torch.ones(2, 3, dtype=torch.float64), D, Vt, G)
    assert ok.tolist() == [True, False]
    assert bool(torch.isfinite(d[0]).all())


# =========================================================================== the SPO objective's factors

@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_kernel_hessian_matches_the_autograd_hessian(beta):
    obj = objective(3, 12, seed=4, beta=beta)
    z = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    full = torch.autograd.functional.hessian(lambda zz: obj.values(zz).sum(), z)     # (3, 12, 3, 12)
    H = torch.stack([full[i, :, i, :] for i in range(3)])                           # its diagonal blocks
    x = 0.7 * z
    k = chebyshev_rank(float((x.amax(1) - x.amin(1)).max()) / 2, 1e-12)
    D, Vt, G = obj.kernel_hessian(z, k)
    assert Vt.shape == (3, k + (2 if beta else 0), 12) and G.shape == (3, Vt.shape[1], Vt.shape[1])
    approx = torch.diag_embed(D) + Vt.mT @ G @ Vt
    torch.testing.assert_close(approx, H, rtol=0, atol=1e-10 * float(H.abs().max()))
    # Exactly singular along 1 (the Laplacian of the interpolated weights, and the KL's shift invariance).
    assert float((approx @ torch.ones(3, 12, 1, dtype=torch.float64)).abs().max()) <= 1e-12 * float(H.abs().max())


def test_gradient_and_diagonal_split_match_the_full_derivatives():
    obj = objective(4, 9, seed=2, beta=0.5)
    z = 3.0 * torch.randn(4, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g, H, gn, fn = obj.split_derivatives(z)
    g2, diag, gn2, fn2 = obj.split_grad_diag(z)
    torch.testing.assert_close(g2, g, rtol=1e-13, atol=1e-18)
    torch.testing.assert_close(diag, torch.diagonal(H, dim1=1, dim2=2), rtol=1e-12, atol=1e-18)
    torch.testing.assert_close(gn2, gn)
    torch.testing.assert_close(fn2, fn)


def test_kernel_hessian_needs_every_pair_shown_equally():
    p = make_problem(2, 5, seed=0, ref="dirichlet")
    obj = SPOObjective(pair_mass(p, sampler="ref"), alpha=1.0, beta=0.1, log_ref=p.log_ref,
                       context_probs=p.context_probs)
    with pytest.raises(ValueError, match="uniform_shown"):
        obj.kernel_hessian(torch.zeros(2, 5, dtype=torch.float64), 4)


# =========================================================================== the solver's kernel steps

def dense_direction(obj, z):
    g, H = obj.grad_hess(z)
    return ex._newton_direction(g, H), g


def test_kernel_direction_is_the_newton_step_within_its_tolerance():
    obj = objective(64, 64, seed=1)
    z0 = torch.tensor(make_problem(64, 64, seed=1, ref="dirichlet").rewards / 0.7)
    z = 0.5 * (z0 + obj.log_ref)
    d_dense, g = dense_direction(obj, z)
    d = ex._kernel_direction(obj, z, g, rebuild=lambda rows: pytest.fail("no context should need the dense step"))
    assert float((d - d_dense).abs().max()) <= 1e-3 * float(d_dense.abs().max())
    assert bool(((g * d).sum(dim=1) < 0).all())


def test_contexts_too_wide_for_the_kernel_take_the_dense_step():
    obj = objective(8, 64, seed=2)
    z = torch.tensor(make_problem(8, 64, seed=2, ref="dirichlet").rewards / 0.7)
    z[3] *= 40.0                                   # αz spans ~100 nats: more nodes than n/4 = 16
    d_dense, g = dense_direction(obj, z)
    rebuilt = []

    def rebuild(rows):
        rebuilt.append(rows.nonzero()[:, 0].tolist())
        return ex._hessian_rows(obj, z, rows)

    d = ex._kernel_direction(obj, z, g, rebuild)
    assert rebuilt == [[3]]
    torch.testing.assert_close(d[3], d_dense[3], rtol=1e-10, atol=1e-12)
    assert float((d - d_dense).abs().max()) <= 1e-3 * float(d_dense.abs().max())


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_steps_reach_the_dense_solvers_minimiser(monkeypatch, seed):
    problem = make_problem(128, 64, seed=seed, ref="dirichlet")
    calls = []
    real = ex._kernel_direction
    monkeypatch.setattr(ex, "_kernel_direction", lambda *a: calls.append(1) or real(*a))
    kernel = solve_exact(problem, alpha=0.7, beta=0.1)
    assert len(calls) >= 2                          # the float32 iterations were kernel steps
    monkeypatch.setattr(ex, "_KERNEL_STEPS", False)
    calls.clear()
    dense = solve_exact(problem, alpha=0.7, beta=0.1)
    assert not calls
    assert kernel.converged and dense.converged
    assert float(np.abs(kernel.policy - dense.policy).sum(axis=1).max()) <= 1e-12
    assert kernel.loss == pytest.approx(dense.loss, rel=1e-14)


def test_float32_iterations_end_when_they_stop_making_progress():
    # Rewards ×10: gaps of ~50 nats give actions whose curvature is far below the float32 gradient's
    # rounding, so their scaled gradient never reaches _LOWP_ERR in float32. The float32 iterations
    # used to go on for all of max_iter; now they hand over to float64 once one fails to halve it.
    p = make_problem(32, 16, seed=0, ref="dirichlet")
    problem = TabularProblem(rewards=10 * p.rewards, ref_policy=p.ref_policy, context_probs=p.context_probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve_exact(problem, alpha=0.7, beta=0.1)
    assert res.converged and res.n_iter < 100
    obj = SPOObjective(pair_mass(problem), alpha=0.7, beta=0.1, log_ref=problem.log_ref,
                       context_probs=problem.context_probs)
    z = torch.tensor(res.logits, requires_grad=True)
    (grad,) = torch.autograd.grad(obj.values(z).sum(), z)       # autograd, not the solver's gradient
    assert float(grad.abs().max()) <= 1e-15


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_start_is_the_dense_quadratic_start(monkeypatch, dtype):
    obj = objective(64, 64, seed=3, beta=0.3)
    r = torch.tensor(make_problem(64, 64, seed=3, ref="dirichlet").rewards)
    z_star = (r - r.mean(dim=1, keepdim=True)) / 0.7                 # the β = 0 minimiser
    o = obj.astype(dtype)
    assert ex._kernel_steps(o)
    kernel = ex._kl_quadratic_start(o, z_star.to(dtype))
    monkeypatch.setattr(ex, "_KERNEL_STEPS", False)
    dense = ex._kl_quadratic_start(o, z_star.to(dtype))
    assert kernel.dtype == dense.dtype == dtype
    assert float((kernel - dense).abs().max()) <= 1e-3 * float((dense - z_star.to(dtype)).abs().max())
