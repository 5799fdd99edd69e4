"""Exact objectives: values against the per-sample loss, gradients and Hessians against autograd."""
import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from spo_tabular import make_problem, pair_mass
from spo_tabular.losses import spo_loss
from spo_tabular.objectives import PairwiseObjective, SPOObjective, spo_margin


def _reference_objective(W, alpha, beta, log_ref, rho):
    """SPEC §5 written directly with the per-sample loss and torch's KL pieces (independent code)."""
    W = torch.tensor(W)
    log_ref = torch.tensor(log_ref)
    rho = torch.tensor(rho)

    def L(z):
        zi, zj = z[:, :, None].expand_as(W), z[:, None, :].expand_as(W)
        pref = (W * spo_loss(zi, zj, alpha=alpha)).sum()
        logp = torch.log_softmax(z, dim=-1)
        return pref + beta * (rho * (logp.exp() * (logp - log_ref)).sum(-1)).sum()
    return L


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.3, 0.5), (4.0, 2.0)])
def test_value_grad_hessian_match_autograd(alpha, beta):
    p = make_problem(3, 5, seed=1, ref="dirichlet")
    W = pair_mass(p, sampler="ref")
    obj = SPOObjective(W, alpha=alpha, beta=beta, log_ref=p.log_ref, context_probs=p.context_probs)
    generic = PairwiseObjective(W, spo_margin(alpha), beta=beta, log_ref=p.log_ref,
                                context_probs=p.context_probs)
    ref = _reference_objective(W, alpha, beta, p.log_ref, p.context_probs)
    z = torch.tensor(np.random.default_rng(0).normal(size=(3, 5)) * 2, dtype=torch.float64, requires_grad=True)
    value = ref(z)
    (grad,) = torch.autograd.grad(value, z)
    H_full = hessian(ref, z.detach()).reshape(15, 15)
    g, H = obj.grad_hess(z.detach())
    assert obj.value(z.detach()) == pytest.approx(float(value.detach()), rel=1e-13)
    torch.testing.assert_close(g, grad, rtol=1e-11, atol=1e-15)
    for x in range(3):   # contexts are independent: the full Hessian is block diagonal
        torch.testing.assert_close(H[x], H_full[5 * x:5 * x + 5, 5 * x:5 * x + 5], rtol=1e-10, atol=1e-14)
    g2, H2 = generic.grad_hess(z.detach())
    torch.testing.assert_close(g2, g, rtol=1e-12, atol=1e-16)
    torch.testing.assert_close(H2, H, rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(obj.grad(z.detach()), g, rtol=1e-12, atol=1e-16)


def test_gradient_matches_central_finite_differences():
    p = make_problem(2, 4, seed=5, ref="dirichlet")
    obj = SPOObjective(pair_mass(p), alpha=0.7, beta=0.3, log_ref=p.log_ref, context_probs=p.context_probs)
    z = torch.tensor(np.random.default_rng(2).normal(size=(2, 4)), dtype=torch.float64)
    g = obj.grad(z)
    h = 1e-6
    for x in range(2):
        for i in range(4):
            e = torch.zeros_like(z)
            e[x, i] = h
            fd = (obj.value(z + e) - obj.value(z - e)) / (2 * h)
            assert float(g[x, i]) == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_shift_invariance_of_objective():
    p = make_problem(2, 4, seed=0, ref="dirichlet")
    obj = SPOObjective(pair_mass(p), alpha=0.5, beta=1.0, log_ref=p.log_ref, context_probs=p.context_probs)
    z = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shifted = z + torch.tensor([[3.0], [-7.0]], dtype=torch.float64)
    assert obj.value(shifted) == pytest.approx(obj.value(z), rel=1e-13)
    torch.testing.assert_close(obj.grad(shifted), obj.grad(z))


def test_values_stay_finite_for_huge_margins():
    p = make_problem(1, 3, seed=0)
    obj = SPOObjective(pair_mass(p), alpha=1.0, beta=0.5, log_ref=p.log_ref, context_probs=p.context_probs)
    z = torch.tensor([[1e4, 0.0, -1e4]], dtype=torch.float64)
    g, H = obj.grad_hess(z)
    assert np.isfinite(obj.value(z)) and torch.isfinite(g).all() and torch.isfinite(H).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("spread", [1.0, 10.0, 500.0])
def test_pair_sigmoid_matches_scipy_expit_of_the_differences(dtype, reverse, spread):
    # σ(a_i − a_j) as e_i / (e_i + e_j) against scipy's expit of the differences in long double, to
    # a few ulps times the condition number 1 + 2 max|a| of the rows (the rounding of a − max a, or
    # of a_i − a_j in the fallback); a spread of 500 takes both dtypes to the sigmoid fallback.
    from scipy.special import expit
    from spo_tabular.objectives import pair_sigmoid
    a = spread * torch.randn(7, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = a.to(dtype)
    exact = np.asarray(x, dtype=np.longdouble)
    want = expit(exact[:, :, None] - exact[:, None, :])
    if reverse:
        want = want.transpose(0, 2, 1)
    out = torch.empty(7, 9, 9, dtype=dtype)
    got = pair_sigmoid(x, out=out, reverse=reverse)
    assert got.dtype == dtype and got.data_ptr() == out.data_ptr()
    assert bool((got.diagonal(dim1=1, dim2=2) == 0.5).all())
    tiny = torch.finfo(dtype).tiny
    rel = np.abs(got.numpy().astype(np.longdouble) - want) / np.maximum(want, tiny)
    cond = 1.0 + 2.0 * float(x.abs().max())
    assert float(rel[want > tiny].max()) <= 8 * torch.finfo(dtype).eps * cond
    np.testing.assert_array_equal(pair_sigmoid(x, reverse=reverse).numpy(), got.numpy())   # no out: the same


def test_pair_sigmoid_propagates_nan_through_the_fallback():
    from spo_tabular.objectives import pair_sigmoid
    a = torch.tensor([[0.0, 1.0, float("nan")]], dtype=torch.float64)
    got = pair_sigmoid(a)
    assert torch.isnan(got[0, 2]).all() and torch.isnan(got[0, :, 2]).all()
    assert float(got[0, 0, 1]) == pytest.approx(1 / (1 + np.e))
