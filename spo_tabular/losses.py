"""Pure per-sample preference losses on log-probabilities of whole responses (SPEC §4).

No reduction, no hidden state: the tabular solvers and the transformer mode call the same functions.
Inputs of any float dtype are upcast to at least float32; stable primitives only (logsigmoid).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validation as v


def _upcast(*tensors):
    """Promote to a common float dtype of at least float32 (float16/bfloat16 inputs are upcast)."""
    tensors = [torch.as_tensor(t) for t in tensors]
    dtype = torch.promote_types(torch.float32, tensors[0].dtype)
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"log-probabilities must be floating point, got {dtype}")
    return [t.to(dtype) for t in tensors]


def spo_loss(logp_chosen, logp_rejected, *, alpha, weights=None):
    """-(1/alpha) * mu * log sigmoid(alpha * (logp_chosen - logp_rejected)), per pair; shapes broadcast."""
    alpha = v.positive_float("alpha", alpha)
    logp_chosen, logp_rejected = _upcast(logp_chosen, logp_rejected)
    margin = logp_chosen - logp_rejected                # (n_pairs,)
    loss = -F.logsigmoid(alpha * margin) / alpha        # logsigmoid stays finite where log(sigmoid) is -inf
    if weights is None:
        return loss
    weights = torch.as_tensor(weights, dtype=loss.dtype, device=loss.device)
    return weights.detach() * loss                      # μ is a stop-gradient weight


LOSSES = {
    "spo": spo_loss,
}
