"""Pure per-sample preference losses on log-probabilities of whole responses (SPEC §4).

No reduction, no hidden state: the tabular solvers and the transformer mode call the same functions.
Inputs of any float dtype are upcast to at least float32 (float16/bfloat16 are never used for the
arithmetic); only stable primitives are used (logsigmoid, logsumexp, softplus).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validation as v


def _upcast(*tensors):
    """Promote to a common float dtype of at least float32 (float16/bfloat16 inputs are upcast)."""
    tensors = [torch.as_tensor(t) for t in tensors]
    dtype = torch.float32
    for t in tensors:
        if not (t.dtype.is_floating_point):
            raise TypeError(f"log-probabilities must be floating point, got {t.dtype}")
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def _weighted(loss, weights):
    if weights is None:
        return loss
    weights = torch.as_tensor(weights, dtype=loss.dtype, device=loss.device)
    return weights.detach() * loss                      # μ is a stop-gradient weight


def spo_loss(logp_chosen, logp_rejected, *, alpha, weights=None):
    """-(1/alpha) * mu * log sigmoid(alpha * (logp_chosen - logp_rejected)), per pair; shapes broadcast."""
    alpha = v.positive_float("alpha", alpha)
    logp_chosen, logp_rejected = _upcast(logp_chosen, logp_rejected)
    margin = logp_chosen - logp_rejected                # (n_pairs,)
    loss = -F.logsigmoid(alpha * margin) / alpha        # logsigmoid stays finite where log(sigmoid) is -inf
    return _weighted(loss, weights)


def spo_best_of_n_loss(logps, best, *, alpha, weights=None):
    """-(1/alpha)(alpha logp_best - logsumexp_k alpha logp_k), per sample; logps (N, k), best (N,) int."""
    alpha = v.positive_float("alpha", alpha)
    (logps,) = _upcast(logps)
    if logps.ndim != 2 or logps.shape[1] < 2:
        raise ValueError(f"logps must have shape (N, k) with k >= 2, got {tuple(logps.shape)}")
    best = torch.as_tensor(best, device=logps.device)
    if best.dtype.is_floating_point or best.dtype == torch.bool:
        raise TypeError(f"best must hold integer indices, got {best.dtype}")
    if best.shape != logps.shape[:1]:
        raise ValueError(f"best must have shape ({logps.shape[0]},), got {tuple(best.shape)}")
    if best.numel() and (int(best.min()) < 0 or int(best.max()) >= logps.shape[1]):
        raise ValueError(f"best entries must lie in [0, {logps.shape[1]})")
    scaled = alpha * logps
    chosen = scaled.gather(1, best.long()[:, None])[:, 0]
    loss = -(chosen - torch.logsumexp(scaled, dim=1)) / alpha   # = -log softmax(α logp)[best] / α
    return _weighted(loss, weights)


def spo_ranked_loss(logps, *, alpha, weights=None):
    """-(1/alpha) Σ_{t<k} (alpha logp_(t) - logsumexp_{s>=t} alpha logp_(s)); logps (N, k) best first."""
    alpha = v.positive_float("alpha", alpha)
    (logps,) = _upcast(logps)
    if logps.ndim != 2 or logps.shape[1] < 2:
        raise ValueError(f"logps must have shape (N, k) with k >= 2, got {tuple(logps.shape)}")
    scaled = alpha * logps
    # logsumexp over every suffix s >= t: a reversed cumulative logsumexp.
    suffix = torch.logcumsumexp(scaled.flip(1), dim=1).flip(1)
    loss = -(scaled[:, :-1] - suffix[:, :-1]).sum(dim=1) / alpha
    return _weighted(loss, weights)


def _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected):
    logp_chosen, logp_rejected, ref_chosen, ref_rejected = _upcast(
        logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)   # h of SPEC §4


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta, weights=None):
    """-log sigmoid(beta * h), h = (logp_w - ref_w) - (logp_l - ref_l), per pair (Rafailov et al. 2023)."""
    beta = v.positive_float("beta", beta)
    h = _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return _weighted(-F.logsigmoid(beta * h), weights)


def ipo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, tau, weights=None):
    """(h - 1/(2 tau))^2, h as in dpo_loss, per pair (Azar et al. 2023, eq. 17)."""
    tau = v.positive_float("tau", tau)
    h = _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return _weighted((h - 1.0 / (2.0 * tau)) ** 2, weights)


def hinge_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, *, beta, weights=None):
    """max(0, 1 - beta * h), h as in dpo_loss, per pair (SLiC, Zhao et al. 2023)."""
    beta = v.positive_float("beta", beta)
    h = _ref_margin(logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    return _weighted(torch.relu(1.0 - beta * h), weights)


def cpo_loss(logp_chosen, logp_rejected, *, beta, lam=1.0, weights=None):
    """-log sigmoid(beta (logp_w - logp_l)) - lam * logp_w, per pair (Xu et al. 2024)."""
    beta = v.positive_float("beta", beta)
    lam = v.nonnegative_float("lam", lam)
    logp_chosen, logp_rejected = _upcast(logp_chosen, logp_rejected)
    return _weighted(-F.logsigmoid(beta * (logp_chosen - logp_rejected)) - lam * logp_chosen, weights)


LOSSES = {
    "spo": spo_loss,
    "spo_best_of_n": spo_best_of_n_loss,
    "spo_ranked": spo_ranked_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "cpo": cpo_loss,
}
