"""Pure per-sample preference losses on log-probabilities of whole responses (SPEC §4).

No reduction, no hidden state: the tabular solvers and the transformer mode call the same functions.
Inputs of any float dtype are upcast to at least float32 (float16/bfloat16 are never used for the
arithmetic); only stable primitives are used (logsigmoid, logsumexp, softplus).

Weights μ (the `weights=` argument of every loss) are per-sample stop-gradient factors: None (μ = 1),
an array broadcastable to the loss, or a callable that receives the policy log-probabilities
stacked as (N, k) (chosen / best first) and returns them; `confidence_weighting` builds the
symmetric model-confidence family μ_γ.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from . import _validation as v


def _upcast(**named):
    """The named inputs as tensors of one float dtype of at least float32 (float16/bfloat16 are upcast).

    Checks that each is a floating-point array and that their shapes broadcast, so a bad input
    raises TypeError/ValueError naming the argument instead of a RuntimeError deep inside torch.
    """
    tensors = []
    dtype = torch.float32
    for name, value in named.items():
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a floating-point tensor or array of log-probabilities, "
                            f"got {type(value).__name__}") from exc
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point (log-probabilities), got {t.dtype}")
        dtype = torch.promote_types(dtype, t.dtype)
        tensors.append(t)
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(named, tensors))
        raise ValueError(f"shapes do not broadcast: {shapes}") from None
    return [t.to(dtype) for t in tensors]


def _weighted(loss, weights, logps):
    """μ ⊙ loss with μ detached; `logps()` gives the (N, k) input of a callable μ. Checks μ finite, ≥ 0, broadcastable."""
    if weights is None:
        return loss
    if callable(weights):
        weights = weights(logps())
    try:
        weights = torch.as_tensor(weights, device=loss.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"weights must be None, a numeric array or a callable, got {type(weights).__name__}") from exc
    if weights.dtype == torch.bool or weights.is_complex():
        raise TypeError(f"weights must be real numbers, got dtype {weights.dtype}")
    weights = weights.detach().to(loss.dtype)           # μ is a stop-gradient weight
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights must be finite")
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    try:
        shape = torch.broadcast_shapes(weights.shape, loss.shape)
    except RuntimeError:
        shape = None
    if shape != loss.shape:
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not broadcast to the per-sample "
                         f"loss of shape {tuple(loss.shape)}")
    return weights * loss


def _pair_logps(logp_chosen, logp_rejected):
    """The two policy log-probabilities stacked as (..., 2), chosen first: the input of a callable μ."""
    return torch.stack(torch.broadcast_tensors(logp_chosen, logp_rejected), dim=-1)


def confidence_weights(logps, *, alpha, gamma):
    """μ_γ = (mean_s π(y_s)^α)^γ / batch mean, detached; logps (N, k) -> (N,). For k = 2 the SPEC §4 μ_γ.

    Symmetric in the k responses, so at the population level it leaves softmax(r/α) stationary.
    Computed in log space: log μ = γ (logsumexp_s α logp_s − log k), normalised by a logsumexp.
    """
    alpha = v.positive_float("alpha", alpha)
    gamma = v.real_float("gamma", gamma)
    (logps,) = _upcast(logps=logps)
    if logps.ndim < 2 or logps.shape[-1] < 1 or logps.numel() == 0:
        raise ValueError(f"logps must have shape (N, k) with N, k >= 1, got {tuple(logps.shape)}")
    logps = logps.detach()
    log_mu = gamma * (torch.logsumexp(alpha * logps, dim=-1) - math.log(logps.shape[-1]))
    n = log_mu.numel()
    return torch.exp(log_mu - (torch.logsumexp(log_mu.reshape(-1), dim=0) - math.log(n)))


def confidence_weighting(*, alpha, gamma):
    """The callable μ_γ for `weights=`: logps (N, k) -> confidence_weights(logps, alpha=alpha, gamma=gamma)."""
    alpha = v.positive_float("alpha", alpha)
    gamma = v.real_float("gamma", gamma)
    return functools.partial(confidence_weights, alpha=alpha, gamma=gamma)


def spo_loss(logp_chosen, logp_rejected, *, alpha, weights=None):
    """-(1/alpha) * mu * log sigmoid(alpha * (logp_chosen - logp_rejected)), per pair; shapes broadcast."""
    alpha = v.positive_float("alpha", alpha)
    logp_chosen, logp_rejected = _upcast(logp_chosen=logp_chosen, logp_rejected=logp_rejected)
    margin = logp_chosen - logp_rejected                # (n_pairs,)
    loss = -F.logsigmoid(alpha * margin) / alpha        # logsigmoid stays finite where log(sigmoid) is -inf
    return _weighted(loss, weights, lambda: _pair_logps(logp_chosen, logp_rejected))


def spo_best_of_n_loss(logps, best, *, alpha, weights=None):
    """-(1/alpha)(alpha logp_best - logsumexp_k alpha logp_k), per sample; logps (N, k), best (N,) int."""
    alpha = v.positive_float("alpha", alpha)
    (logps,) = _upcast(logps=logps)
    if logps.ndim != 2 or logps.shape[1] < 2:
        raise ValueError(f"logps must have shape (N, k) with k >= 2, got {tuple(logps.shape)}")
    try:
        best = torch.as_tensor(best, device=logps.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"best must be an integer tensor or array of shape (N,), got {type(best).__name__}") from exc
    if best.dtype.is_floating_point or best.dtype == torch.bool or best.dtype.is_complex:
        raise TypeError(f"best must hold integer indices, got {best.dtype}")
    if best.shape != logps.shape[:1]:
        raise ValueError(f"best must have shape ({logps.shape[0]},), got {tuple(best.shape)}")
    if best.numel() and (int(best.min()) < 0 or int(best.max()) >= logps.shape[1]):
        raise ValueError(f"best entries must lie in [0, {logps.shape[1]})")
    scaled = alpha * logps
    chosen = scaled.gather(1, best.long()[:, None])[:, 0]
    loss = -(chosen - torch.logsumexp(scaled, dim=1)) / alpha   # = -log softmax(α logp)[best] / α
    return _weighted(loss, weights, lambda: logps)


def spo_ranked_loss(logps, *, alpha, weights=None):
    """-(1/alpha) Σ_{t<k} (alpha logp_(t) - logsumexp_{s>=t} alpha logp_(s)); logps (N, k) best first."""
    alpha = v.positive_float("alpha", alpha)
    (logps,) = _upcast(logps=logps)
    if logps.ndim != 2 or logps.shape[1] < 2:
        raise ValueError(f"logps must have shape (N, k) with k >= 2, got {tuple(logps.shape)}")
    scaled = alpha * logps
    # logsumexp over every suffix s >= t: a reversed cumulative logsumexp.
    suffix = torch.logcumsumexp(scaled.flip(1), dim=1).flip(1)
    loss = -(scaled[:, :-1] - suffix[:, :-1]).sum(dim=1) / alpha
    return _weighted(loss, weights, lambda: logps)


def _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected):
    """(h, logp_chosen, logp_rejected) upcast, h = (logp_w − ref_w) − (logp_l − ref_l) of SPEC §4."""
    logp_chosen, logp_rejected, ref_chosen, ref_rejected = _upcast(
        logp_chosen=logp_chosen, logp_rejected=logp_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    return (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected), logp_chosen, logp_rejected


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta, weights=None):
    """-log sigmoid(beta * h), h = (logp_w - ref_w) - (logp_l - ref_l), per pair (Rafailov et al. 2023)."""
    beta = v.positive_float("beta", beta)
    h, lw, ll = _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return _weighted(-F.logsigmoid(beta * h), weights, lambda: _pair_logps(lw, ll))


def ipo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, tau, weights=None):
    """(h - 1/(2 tau))^2, h as in dpo_loss, per pair (Azar et al. 2023, eq. 17): target margin 1/(2 tau)."""
    tau = v.positive_float("tau", tau)
    h, lw, ll = _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return _weighted((h - 1.0 / (2.0 * tau)) ** 2, weights, lambda: _pair_logps(lw, ll))


def hinge_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta, weights=None):
    """max(0, 1 - beta * h), h as in dpo_loss, per pair (SLiC, Zhao et al. 2023): margin 1/beta."""
    beta = v.positive_float("beta", beta)
    h, lw, ll = _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return _weighted(torch.relu(1.0 - beta * h), weights, lambda: _pair_logps(lw, ll))


def cpo_loss(logp_chosen, logp_rejected, *, beta, lam=1.0, weights=None):
    """-log sigmoid(beta (logp_w - logp_l)) - lam * logp_w, per pair (Xu et al. 2024)."""
    beta = v.positive_float("beta", beta)
    lam = v.nonnegative_float("lam", lam)
    logp_chosen, logp_rejected = _upcast(logp_chosen=logp_chosen, logp_rejected=logp_rejected)
    loss = -F.logsigmoid(beta * (logp_chosen - logp_rejected)) - lam * logp_chosen
    return _weighted(loss, weights, lambda: _pair_logps(logp_chosen, logp_rejected))


LOSSES = {
    "spo": spo_loss,
    "spo_best_of_n": spo_best_of_n_loss,
    "spo_ranked": spo_ranked_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "cpo": cpo_loss,
}
