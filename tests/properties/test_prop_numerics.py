"""Numerics of the per-sample losses: the stable form equals the naive one where that is finite and
stays finite beyond (margins up to 1e4 in float64); float16 / bfloat16 inputs give the float32 answer
within the rounding of the inputs; gradients pass torch.autograd.gradcheck in float64."""
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from spo_tabular.losses import (cpo_loss, dpo_loss, hinge_loss, ipo_loss, spo_best_of_n_loss, spo_loss,
                                spo_ranked_loss)
from zoo_strategies import alphas, arrays, betas, floats, lams, logps, taus  # noqa: F401

margins = st.one_of(arrays((32,), -1e4, 1e4), arrays((32,), -40.0, 40.0)).map(torch.from_numpy)


def naive_spo(a, b, alpha):
    return -torch.log(torch.sigmoid(alpha * (a - b))) / alpha


def naive_best_of_n(lp, best, alpha):
    p = torch.exp(alpha * lp) / torch.exp(alpha * lp).sum(dim=1, keepdim=True)
    return -torch.log(p.gather(1, best[:, None])[:, 0]) / alpha


def naive_ranked(lp, alpha):
    total = 0.0
    for t in range(lp.shape[1] - 1):
        e = torch.exp(alpha * lp[:, t:])
        total = total - torch.log(e[:, 0] / e.sum(dim=1)) / alpha
    return total


def _agree_where_finite(stable, naive, normal):
    """Equal where the naive form is safe: every exp it takes is a normal float (`normal`, |t| ≤ 700; below
    that subnormals lose digits) and its value ≥ 1e-6 (below that log(1 − tiny) has lost its digits)."""
    assert bool(torch.isfinite(stable).all())
    ok = normal & torch.isfinite(naive) & (naive > 1e-6)
    torch.testing.assert_close(stable[ok], naive[ok], rtol=1e-9, atol=1e-12)


@given(d=margins, alpha=alphas, beta=betas, lam=lams)
def test_stable_pairwise_forms_match_naive_and_stay_finite(d, alpha, beta, lam):
    """spo / dpo / cpo use logsigmoid: equal to log(sigmoid(.)) where that is finite, finite up to |margin| = 1e4."""
    zero = torch.zeros_like(d)
    _agree_where_finite(spo_loss(d, zero, alpha=alpha), naive_spo(d, zero, alpha), (alpha * d).abs() <= 700)
    _agree_where_finite(dpo_loss(d, zero, zero, zero, beta=beta), -torch.log(torch.sigmoid(beta * d)),
                        (beta * d).abs() <= 700)
    _agree_where_finite(cpo_loss(d, zero, beta=beta, lam=lam),
                        -torch.log(torch.sigmoid(beta * d)) - lam * d, (beta * d).abs() <= 700)
    for value in (ipo_loss(d, zero, zero, zero, tau=0.1), hinge_loss(d, zero, zero, zero, beta=beta)):
        assert bool(torch.isfinite(value).all())
    # Far out the loss is linear: −(1/α) log σ(αd) → −d as αd → −∞.
    far = alpha * d < -50
    torch.testing.assert_close(spo_loss(d, zero, alpha=alpha)[far], -d[far], rtol=1e-12, atol=1e-12)


@given(data=st.data(), alpha=alphas)
def test_stable_multi_response_forms_match_naive_and_stay_finite(data, alpha):
    """best-of-n / ranked use logsumexp: equal to the exp/sum form where finite, finite for logps down to −1e4."""
    k = data.draw(st.integers(2, 5))
    lp = data.draw(logps((16, k), lo=-1e4, hi=0.0))
    best = torch.from_numpy(data.draw(arrays((16,), 0, k - 0.001))).long()
    normal = (alpha * lp >= -700).all(dim=1)
    _agree_where_finite(spo_best_of_n_loss(lp, best, alpha=alpha), naive_best_of_n(lp, best, alpha), normal)
    _agree_where_finite(spo_ranked_loss(lp, alpha=alpha), naive_ranked(lp, alpha), normal)


@given(a=logps((16,), lo=-20.0), b=logps((16,), lo=-20.0), ra=logps((16,), lo=-5.0), rb=logps((16,), lo=-5.0),
       lp=logps((16, 3), lo=-20.0), low=st.sampled_from([torch.float16, torch.bfloat16]),
       alpha=alphas, beta=betas, tau=taus)
def test_low_precision_inputs_give_the_float32_answer(a, b, ra, rb, lp, low, alpha, beta, tau):
    """Half inputs are upcast: the result is float32 and equals float32 arithmetic on the rounded inputs;
    against unrounded float32 inputs it differs by at most |∂ℓ/∂x|·(input rounding)."""
    best = torch.zeros(16, dtype=torch.long)
    cases = [(lambda x, y, u, w, l: spo_loss(x, y, alpha=alpha), 1.0),
             (lambda x, y, u, w, l: dpo_loss(x, y, u, w, beta=beta), beta),
             (lambda x, y, u, w, l: cpo_loss(x, y, beta=beta), beta + 1.0),
             (lambda x, y, u, w, l: spo_best_of_n_loss(l, best, alpha=alpha), 2.0),
             (lambda x, y, u, w, l: spo_ranked_loss(l, alpha=alpha), 4.0)]
    f32 = [t.float() for t in (a, b, ra, rb, lp)]
    rounded = [t.to(low) for t in f32]
    unit = 2.0 ** -8 if low == torch.bfloat16 else 2.0 ** -11      # relative rounding of the format
    for fn, lipschitz in cases:
        out = fn(*rounded)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(*[t.float() for t in rounded]), rtol=0, atol=0)
        size = max(float(t.abs().max()) for t in f32)
        bound = lipschitz * 4 * size * unit + 1e-5
        assert float((out - fn(*f32)).abs().max()) <= bound


def _gradcheck(fn, *inputs):
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@given(a=logps((6,), lo=-8.0), b=logps((6,), lo=-8.0), ra=logps((6,), lo=-3.0), rb=logps((6,), lo=-3.0),
       lp=logps((6, 4), lo=-8.0), alpha=floats(0.2, 5.0), beta=floats(0.2, 5.0), tau=taus, lam=lams)
def test_gradients_match_gradcheck_in_float64(a, b, ra, rb, lp, alpha, beta, tau, lam):
    """Every loss's autograd gradient matches central finite differences (hinge away from its kink)."""
    best = torch.tensor([0, 1, 2, 3, 0, 1])
    w = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    _gradcheck(lambda x, y: spo_loss(x, y, alpha=alpha, weights=w), a, b)
    _gradcheck(lambda x, y, u, v: dpo_loss(x, y, u, v, beta=beta), a, b, ra, rb)
    _gradcheck(lambda x, y, u, v: ipo_loss(x, y, u, v, tau=tau), a, b, ra, rb)
    _gradcheck(lambda x, y: cpo_loss(x, y, beta=beta, lam=lam), a, b)
    _gradcheck(lambda l: spo_best_of_n_loss(l, best, alpha=alpha), lp)
    _gradcheck(lambda l: spo_ranked_loss(l, alpha=alpha), lp)
    h = (a - ra) - (b - rb)
    assume(bool(((1.0 - beta * h).abs() > 1e-3).all()))
    _gradcheck(lambda x, y, u, v: hinge_loss(x, y, u, v, beta=beta), a, b, ra, rb)
