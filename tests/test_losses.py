"""Per-sample losses (SPEC §4): values worked out by hand, weights μ, upcasting, extremes and bad inputs."""
import math

import pytest
import torch

from spo_tabular.losses import (LOSSES, confidence_weighting, confidence_weights, cpo_loss, dpo_loss, hinge_loss,
                                ipo_loss, spo_best_of_n_loss, spo_loss, spo_ranked_loss)



def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# Two actions, one pair: π(chosen) = 3/4, π(rejected) = 1/4, uniform reference (log ½ each).
LW, LL, REF = t(math.log(0.75)), t(math.log(0.25)), t(math.log(0.5))


def test_registry_names_every_loss():
    assert set(LOSSES) == {"spo", "spo_best_of_n", "spo_ranked", "dpo", "ipo", "hinge", "cpo"}


def test_spo_loss_by_hand():
    """α = 1: −log σ(log 3) = −log(3/4) = log(4/3); α = 2: σ(2 log 3) = 9/10, so ½ log(10/9)."""
    assert float(spo_loss(LW, LL, alpha=1.0)) == pytest.approx(math.log(4 / 3), rel=1e-15)
    assert float(spo_loss(LW, LL, alpha=2.0)) == pytest.approx(0.5 * math.log(10 / 9), rel=1e-14)


def test_baseline_losses_by_hand():
    """h = log 3 with a uniform reference: DPO log(4/3); IPO τ=½ (log 3 − 1)²; hinge β=½ 1 − ½ log 3; CPO 2 log(4/3)."""
    assert float(dpo_loss(LW, LL, REF, REF, beta=1.0)) == pytest.approx(math.log(4 / 3), rel=1e-15)
    assert float(ipo_loss(LW, LL, REF, REF, tau=0.5)) == pytest.approx((math.log(3) - 1) ** 2, rel=1e-14)
    assert float(hinge_loss(LW, LL, REF, REF, beta=0.5)) == pytest.approx(1 - 0.5 * math.log(3), rel=1e-14)
    assert float(hinge_loss(LW, LL, REF, REF, beta=1.0)) == 0.0            # log 3 > 1: past the margin
    assert float(cpo_loss(LW, LL, beta=1.0, lam=1.0)) == pytest.approx(2 * math.log(4 / 3), rel=1e-15)
    assert float(cpo_loss(LW, LL, beta=1.0, lam=0.0)) == pytest.approx(math.log(4 / 3), rel=1e-15)


def test_ipo_target_margin_is_one_over_two_tau():
    """(h − 1/(2τ))² vanishes exactly at h = 1/(2τ)."""
    tau = 0.25
    h = 1 / (2 * tau)
    assert float(ipo_loss(t(h), t(0.0), t(0.0), t(0.0), tau=tau)) == 0.0


def test_multi_response_losses_by_hand():
    """Best-of-2 of (¾, ¼) is log(4/3); ranking (½, 0.3, 0.2) costs −log ½ − log(0.3/0.5) = log(10/3) at α = 1."""
    lp = torch.log(t(0.75, 0.25))[None]
    assert float(spo_best_of_n_loss(lp, torch.tensor([0]), alpha=1.0)) == pytest.approx(math.log(4 / 3), rel=1e-15)
    assert float(spo_best_of_n_loss(lp, torch.tensor([1]), alpha=1.0)) == pytest.approx(math.log(4), rel=1e-15)
    ranked = torch.log(t(0.5, 0.3, 0.2))[None]
    assert float(spo_ranked_loss(ranked, alpha=1.0)) == pytest.approx(math.log(10 / 3), rel=1e-14)
    # α = 2: −½[(2 log ½ − log(¼ + 0.09 + 0.04)) + (2 log 0.3 − log(0.09 + 0.04))]
    expected = -0.5 * ((2 * math.log(0.5) - math.log(0.38)) + (2 * math.log(0.3) - math.log(0.13)))
    assert float(spo_ranked_loss(ranked, alpha=2.0)) == pytest.approx(expected, rel=1e-14)


def test_results_are_finite_for_margins_of_1e4():
    big = t(1e4, -1e4)
    zero = torch.zeros(2, dtype=torch.float64)
    for value in (spo_loss(big, zero, alpha=3.0), dpo_loss(big, zero, zero, zero, beta=3.0),
                  ipo_loss(big, zero, zero, zero, tau=0.1), hinge_loss(big, zero, zero, zero, beta=3.0),
                  cpo_loss(big, zero, beta=3.0), spo_best_of_n_loss(torch.stack((big, zero), 1), torch.tensor([1, 0]),
                                                                     alpha=3.0),
                  spo_ranked_loss(torch.stack((big, zero, -big), 1), alpha=3.0)):
        assert bool(torch.isfinite(value).all())
    assert spo_loss(big, zero, alpha=3.0).tolist() == pytest.approx([0.0, 1e4], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_upcast_to_float32(dtype):
    out = spo_loss(LW.to(dtype), LL.to(dtype), alpha=1.0)
    assert out.dtype == torch.float32
    assert spo_loss(LW.float(), LL.float(), alpha=1.0, weights=t(2.0)).dtype == torch.float32
    assert spo_loss(LW, LL.float(), alpha=1.0).dtype == torch.float64


# --------------------------------------------------------------------------- weights μ

def test_array_weights_scale_each_sample_and_are_detached():
    a = t(-0.1, -2.0, -0.5).requires_grad_(True)
    b = t(-1.0, -0.3, -0.5)
    w = t(0.5, 2.0, 0.0).requires_grad_(True)
    loss = spo_loss(a, b, alpha=1.0, weights=w)
    torch.testing.assert_close(loss, w.detach() * spo_loss(a, b, alpha=1.0))
    loss.sum().backward()
    assert w.grad is None                               # stop-gradient: nothing flows into μ


def test_callable_weights_see_the_stacked_logps_chosen_first():
    seen = {}

    def mu(logps):
        seen["logps"] = logps
        return torch.full(logps.shape[:-1], 3.0, dtype=logps.dtype)

    a, b = t(-0.1, -2.0), t(-1.0, -0.3)
    torch.testing.assert_close(spo_loss(a, b, alpha=1.0, weights=mu), 3 * spo_loss(a, b, alpha=1.0))
    torch.testing.assert_close(seen["logps"], torch.stack((a, b), dim=1))
    lp = t(-1.0, -2.0, -3.0)[None]
    torch.testing.assert_close(spo_ranked_loss(lp, alpha=1.0, weights=mu), 3 * spo_ranked_loss(lp, alpha=1.0))
    torch.testing.assert_close(seen["logps"], lp)


def test_confidence_weights_by_hand():
    """μ_γ ∝ (½(π_w^α + π_l^α))^γ, then divided by the batch mean: here ((¾+¼)/2)^1 = ½ and ((½+½)/2) = ½."""
    lp = torch.log(t(0.75, 0.25, 0.5, 0.5, 0.9, 0.1)).reshape(3, 2)
    raw = torch.tensor([0.5, 0.5, 0.5])
    torch.testing.assert_close(confidence_weights(lp, alpha=1.0, gamma=1.0), raw / raw.mean(), check_dtype=False)
    raw = ((0.75 ** 2 + 0.25 ** 2) / 2, (0.25 + 0.25) / 2, (0.81 + 0.01) / 2)
    raw = torch.tensor(raw, dtype=torch.float64) ** 1.5
    torch.testing.assert_close(confidence_weights(lp, alpha=2.0, gamma=1.5), raw / raw.mean())


def test_confidence_weights_are_symmetric_positive_mean_one_and_detached():
    lp = torch.log_softmax(torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 1)
    lp.requires_grad_(True)
    mu = confidence_weights(lp, alpha=0.7, gamma=2.0)
    assert not mu.requires_grad
    assert bool((mu > 0).all()) and float(mu.mean()) == pytest.approx(1.0, rel=1e-14)
    torch.testing.assert_close(confidence_weights(lp.flip(1), alpha=0.7, gamma=2.0), mu, rtol=1e-14, atol=0)
    torch.testing.assert_close(confidence_weights(lp, alpha=0.7, gamma=0.0), torch.ones(50, dtype=torch.float64))
    fn = confidence_weighting(alpha=0.7, gamma=2.0)
    torch.testing.assert_close(spo_loss(lp[:, 0], lp[:, 1], alpha=0.7, weights=fn),
                               mu * spo_loss(lp[:, 0], lp[:, 1], alpha=0.7))


def test_confidence_weights_stay_finite_for_extreme_logps():
    lp = t(-1e4, -1e4, 0.0, -1e4).reshape(2, 2)
    mu = confidence_weights(lp, alpha=1.0, gamma=3.0)
    assert bool(torch.isfinite(mu).all()) and float(mu.mean()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        spo_loss(LW, LL, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        spo_ranked_loss(torch.zeros(1, 2), alpha=alpha)


def test_bad_parameters_are_refused():
    with pytest.raises(TypeError, match="alpha"):
        spo_loss(LW, LL, alpha=True)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(LW, LL, REF, REF, beta=0.0)
    with pytest.raises(ValueError, match="tau"):
        ipo_loss(LW, LL, REF, REF, tau=-1.0)
    with pytest.raises(ValueError, match="beta"):
        hinge_loss(LW, LL, REF, REF, beta=float("nan"))
    with pytest.raises(ValueError, match="lam"):
        cpo_loss(LW, LL, beta=1.0, lam=-0.5)
    with pytest.raises(ValueError, match="gamma"):
        confidence_weights(torch.zeros(2, 2), alpha=1.0, gamma=float("nan"))
    with pytest.raises(TypeError, match="floating point"):
        spo_loss(torch.tensor([1]), torch.tensor([0]), alpha=1.0)


def test_bad_multi_response_inputs_are_refused():
    lp = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="shape"):
        spo_best_of_n_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long), alpha=1.0)
    with pytest.raises(ValueError, match="k >= 2"):
        spo_ranked_loss(torch.zeros(3, 1), alpha=1.0)
    with pytest.raises(ValueError, match="best entries"):
        spo_best_of_n_loss(lp, torch.tensor([0, 1, 4]), alpha=1.0)
    with pytest.raises(TypeError, match="integer"):
        spo_best_of_n_loss(lp, torch.tensor([0.0, 1.0, 2.0]), alpha=1.0)
    with pytest.raises(ValueError, match="best must have shape"):
        spo_best_of_n_loss(lp, torch.tensor([0, 1]), alpha=1.0)


@pytest.mark.parametrize("weights, error, match", [
    (t(-1.0), ValueError, "non-negative"),
    (t(float("nan")), ValueError, "finite"),
    (torch.ones(3), ValueError, "broadcast"),
    ("heavy", TypeError, "weights"),
    (torch.tensor([True]), TypeError, "real"),
    (lambda logps: -torch.ones(logps.shape[0]), ValueError, "non-negative"),
])
def test_bad_weights_are_refused(weights, error, match):
    with pytest.raises(error, match=match):
        spo_loss(LW[None], LL[None], alpha=1.0, weights=weights)
