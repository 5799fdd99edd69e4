"""Exact tabular objectives for the rest of the loss zoo (SPEC §4–§5), with closed-form derivatives.

Same interface as objectives.SPOObjective, so the batched Newton solver runs on every one of them:
.values(z) (m,), .grad(z) (m, n), .grad_hess(z) -> ((m, n), (m, n, n)), .context_mass() (m,).
DPO, IPO and hinge are pairwise margin losses of h = (z_i − lr_i) − (z_j − lr_j), i.e. of the logit
margin with the offset c_ij = lr_i − lr_j; CPO adds a cross-entropy on the chosen action; best-of-n
and ranked SPO are sums of choice events (choice_sets.ChoiceEvents). β is the KL weight only for the
SPO variants; for DPO, hinge and CPO it is the loss strength (no KL term is added).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .choice_sets import ChoiceEvents
from .objectives import DTYPE, MarginLoss, PairwiseObjective, as_tensor

Tensor = torch.Tensor


# --------------------------------------------------------------------------- margin losses ℓ(u)

def dpo_margin(beta: float) -> MarginLoss:
    """DPO: ℓ(u) = −log σ(β u); ℓ' = −β σ(−β u); ℓ'' = β² σ(β u) σ(−β u)."""
    return MarginLoss(
        name="dpo",
        # logsigmoid, not softplus: F.softplus returns x unchanged above its threshold 20, dropping
        # log1p(e^{−20}) ≈ 2e-9 — more than the solver's tolerance.
        value=lambda u: -F.logsigmoid(beta * u),
        d1=lambda u: -beta * torch.sigmoid(-beta * u),
        # σ(t)σ(−t) = exp(logσ(t) + logσ(−t)) stays accurate where σ(−t) underflows.
        d2=lambda u: beta * beta * torch.exp(F.logsigmoid(beta * u) + F.logsigmoid(-beta * u)),
        width=1.0 / beta,
    )


def squared_margin() -> MarginLoss:
    """IPO: ℓ(u) = u² (the target 1/(2τ) lives in the offset); ℓ' = 2u; ℓ'' = 2."""
    return MarginLoss(name="ipo", value=lambda u: u * u, d1=lambda u: 2.0 * u,
                      d2=lambda u: torch.full_like(u, 2.0))


def hinge_margin(beta: float) -> MarginLoss:
    """Hinge (SLiC): ℓ(u) = max(0, 1 − β u); a subgradient −β 1[β u < 1]; ℓ'' = 0 (piecewise linear)."""
    return MarginLoss(name="hinge", value=lambda u: torch.relu(1.0 - beta * u),
                      d1=lambda u: -beta * (beta * u < 1.0).to(u.dtype), d2=torch.zeros_like, width=1.0 / beta)


def _softmax_residual(p: Tensor, mass: Tensor, total: Tensor):
    """(M p − mass, 1 − p) along the last axis, accurate where one p_i is close to 1.

    Σ_i (M p_i − mass_i) = 0 and 1 − p_i = Σ_{j≠i} p_j, so at the largest p_i both are taken from the
    other (small, accurately computed) entries instead of subtracting two nearly equal numbers.
    """
    residual = total[..., None] * p - mass
    rest = 1.0 - p
    top = p.argmax(dim=-1, keepdim=True)
    others = torch.ones_like(p, dtype=torch.bool).scatter_(-1, top, False)
    residual = residual.scatter(-1, top, -(residual * others).sum(dim=-1, keepdim=True))
    rest = rest.scatter(-1, top, (p * others).sum(dim=-1, keepdim=True))
    return residual, rest


def _ref_offset(log_ref) -> Tensor:
    lr = as_tensor(log_ref)
    return lr[:, :, None] - lr[:, None, :]          # (m, n, n): c_ij = lr_i − lr_j, so u = h


def dpo_objective(pair_mass, *, beta, log_ref, context_probs) -> PairwiseObjective:
    """Σ W_ij (−log σ(β h_ij)), h = (z_i − lr_i) − (z_j − lr_j); minimiser (BT, connected) π_ref·e^{r/β}/Z."""
    return PairwiseObjective(pair_mass, dpo_margin(float(beta)), beta=0.0, log_ref=log_ref,
                             context_probs=context_probs, offset=_ref_offset(log_ref))


def ipo_objective(pair_mass, *, tau, log_ref, context_probs) -> PairwiseObjective:
    """Σ W_ij (h_ij − 1/(2τ))²: a weighted least-squares problem whose Hessian is a constant Laplacian."""
    offset = _ref_offset(log_ref) + 1.0 / (2.0 * float(tau))
    return PairwiseObjective(pair_mass, squared_margin(), beta=0.0, log_ref=log_ref,
                             context_probs=context_probs, offset=offset)


def hinge_objective(pair_mass, *, beta, log_ref, context_probs) -> PairwiseObjective:
    """Σ W_ij max(0, 1 − β h_ij): values only (it is piecewise linear; solved as an LP, not by Newton)."""
    return PairwiseObjective(pair_mass, hinge_margin(float(beta)), beta=0.0, log_ref=log_ref,
                             context_probs=context_probs, offset=_ref_offset(log_ref))


class CPOObjective(PairwiseObjective):
    """Σ W_ij [−log σ(β(z_i − z_j)) − λ log π_z(i)] = DPO without reference + λ Σ_i ω_i (−log π_i), ω_i = Σ_j W_ij.

    The second term is a cross-entropy: gradient λ(Mπ − ω), Hessian λ M (diag π − ππᵀ), M = Σ_i ω_i.
    """

    def __init__(self, pair_mass, *, beta, lam, log_ref, context_probs):
        super().__init__(pair_mass, dpo_margin(float(beta)), beta=0.0, log_ref=log_ref,
                         context_probs=context_probs)
        self.lam = float(lam)
        self.wins = self.W.sum(dim=2)                  # (m, n) ω_i: mass of i being chosen
        self.total = self.wins.sum(dim=1)              # (m,) M

    def preference_values(self, z: Tensor) -> Tensor:
        ce = -(self.wins * torch.log_softmax(z, dim=-1)).sum(dim=1)
        return super().preference_values(z) + self.lam * ce

    def preference_grad(self, z: Tensor) -> Tensor:
        residual, _ = _softmax_residual(torch.softmax(z, dim=-1), self.wins, self.total)
        return super().preference_grad(z) + self.lam * residual

    def _preference_grad_hess(self, z: Tensor):
        g, H = super()._preference_grad_hess(z)
        p = torch.softmax(z, dim=-1)
        residual, rest = _softmax_residual(p, self.wins, self.total)
        Hce = -p[:, :, None] * p[:, None, :]
        Hce.diagonal(dim1=1, dim2=2).copy_(p * rest)                # p_i (1 − p_i), accurately
        return g + self.lam * residual, H + (self.lam * self.total)[:, None, None] * Hce

    def context_mass(self) -> Tensor:
        return (1.0 + self.lam) * self.W.sum(dim=(1, 2))


class ChoiceObjective(PairwiseObjective):
    """Σ_events Σ_{i∈S} M_i (−z_i + (1/α) logsumexp_S α z) + β Σ_x ρ_x KL(π_z ‖ π_ref): best-of-n / ranked SPO.

    Per event with total mass M and p = softmax_S(α z): gradient M p_i − M_i, Hessian α M (diag p − ppᵀ)
    on S (both taken in the cancellation-free form of _softmax_residual). The KL term is inherited from PairwiseObjective (which holds no pair mass here).
    """

    def __init__(self, events: ChoiceEvents, *, alpha, beta, log_ref, context_probs):
        m, n = events.n_contexts, events.n_actions
        super().__init__(torch.zeros((m, 1, 1), dtype=DTYPE), MarginLoss("none", None, None, None, width=1.0 / alpha),
                         beta=beta, log_ref=log_ref, context_probs=context_probs)
        self.alpha = float(alpha)
        self.mass = as_tensor(events.context_mass())                # (m,)
        self._groups = []
        for ctx, sets, mass in events.groups:
            ctx_t = torch.from_numpy(np.array(ctx, dtype=np.int64))        # copies: data arrays are read-only
            sets_t = torch.from_numpy(np.array(sets, dtype=np.int64))
            mass_t = as_tensor(mass)                                # (E, j) winner mass
            total = mass_t.sum(dim=1)                               # (E,) M per event
            keep = total > 0                                        # zero-mass events add nothing
            ctx_t, sets_t, mass_t, total = ctx_t[keep], sets_t[keep], mass_t[keep], total[keep]
            gather = ctx_t[:, None] * n + sets_t                    # (E, j) flat (x, i)
            pairs = (gather[:, :, None] * n + sets_t[:, None, :])   # (E, j, j) flat (x, i, i')
            self._groups.append((ctx_t, gather, pairs, mass_t, total))

    def _scaled(self, z: Tensor, gather: Tensor):
        return self.alpha * z.reshape(-1)[gather]                  # (E, j) α z_S

    def preference_values(self, z: Tensor) -> Tensor:
        # Σ_events [M lse_S(αz)/α − Σ_i M_i z_i], per event: an O(1) sum, no cancellation between events.
        out = torch.zeros(z.shape[0], dtype=DTYPE)
        for ctx, gather, _, mass, total in self._groups:
            scaled = self._scaled(z, gather)
            per_event = (total * torch.logsumexp(scaled, dim=1) - (mass * scaled).sum(dim=1)) / self.alpha
            out = out.index_add(0, ctx, per_event)
        return out

    def preference_grad(self, z: Tensor) -> Tensor:
        g = torch.zeros(z.numel(), dtype=DTYPE)
        for _, gather, _, mass, total in self._groups:
            residual, _ = _softmax_residual(torch.softmax(self._scaled(z, gather), dim=1), mass, total)
            g.index_add_(0, gather.reshape(-1), residual.reshape(-1))
        return g.reshape(z.shape)

    def _preference_grad_hess(self, z: Tensor):
        m, n = z.shape
        g = torch.zeros(m * n, dtype=DTYPE)
        H = torch.zeros(m * n * n, dtype=DTYPE)
        for _, gather, pairs, mass, total in self._groups:
            p = torch.softmax(self._scaled(z, gather), dim=1)
            residual, rest = _softmax_residual(p, mass, total)
            g.index_add_(0, gather.reshape(-1), residual.reshape(-1))
            # α M (diag p(1 − p) − ppᵀ off the diagonal): the diagonal lands on (i, i) entries of `pairs`.
            Mp = total[:, None] * p
            block = -self.alpha * Mp[:, :, None] * p[:, None, :]
            block.diagonal(dim1=1, dim2=2).copy_(self.alpha * Mp * rest)
            H.index_add_(0, pairs.reshape(-1), block.reshape(-1))
        return g.reshape(m, n), H.reshape(m, n, n)

    def context_mass(self) -> Tensor:
        return self.mass + self.beta * self.context_probs
