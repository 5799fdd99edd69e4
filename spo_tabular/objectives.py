"""Exact tabular objectives with closed-form gradients and Hessians (SPEC §5).

    L(z) = Σ_{x,i,j} W[x,i,j] ℓ(z_xi − z_xj − c[x,i,j])  +  β Σ_x ρ_x KL(π_z(·|x) ‖ π_ref(·|x))

ℓ is a scalar margin loss (for SPO, ℓ(d) = −(1/α) log σ(α d)); c an optional per-pair offset.
Contexts are independent, so values come per context (m,), gradients (m, n) and Hessians
(m, n, n). The preference Hessian is a weighted graph Laplacian; the KL Hessian is
diagonal-plus-low-rank and not positive definite everywhere. Work is in torch float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .lowrank import sigmoid_kernel

Tensor = torch.Tensor
DTYPE = torch.float64
_QUADRATIC_RADIUS = 0.05     # in logits, where every curvature of the objective varies over ≥ 1


@dataclass(frozen=True)
class MarginLoss:
    """A scalar loss ℓ(d) of the pair margin d with its first and second derivatives (elementwise).

    `width` is the change of margin over which ℓ'' changes by O(1): 1/α for −(1/α) log σ(α d), ∞ for
    a quadratic. A solver trusts its quadratic model only for steps short against it.
    """

    name: str
    value: Callable[[Tensor], Tensor]
    d1: Callable[[Tensor], Tensor]
    d2: Callable[[Tensor], Tensor]
    width: float = math.inf


def spo_margin(alpha: float) -> MarginLoss:
    """SPO: ℓ(d) = −(1/α) log σ(α d); ℓ' = −σ(−α d); ℓ'' = α σ(α d) σ(−α d)."""
    return MarginLoss(
        name="spo",
        value=lambda d: -F.logsigmoid(alpha * d) / alpha,
        d1=lambda d: -torch.sigmoid(-alpha * d),
        # σ(t)σ(−t) = exp(logσ(t) + logσ(−t)) stays accurate where σ(−t) underflows.
        d2=lambda d: alpha * torch.exp(F.logsigmoid(alpha * d) + F.logsigmoid(-alpha * d)),
        width=1.0 / alpha,
    )


def as_tensor(x) -> Tensor:
    """float64 torch view of an array-like."""
    if torch.is_tensor(x):
        return x.to(DTYPE)
    arr = np.asarray(x, dtype=np.float64)
    # Share memory with a writable float64 array (no second copy of a large W); copy read-only ones.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


class PairwiseObjective:
    """L(z) of SPEC §5 for pair mass W (m, n, n), margin loss ℓ, KL weight β, π_ref (m, n), ρ (m,)."""

    def __init__(self, pair_mass, margin: MarginLoss, *, beta: float, log_ref, context_probs,
                 offset=None):
        self.W = as_tensor(pair_mass)                    # (m, n, n)
        self.margin = margin
        self.log_ref = as_tensor(log_ref)                # (m, n)
        self.context_probs = as_tensor(context_probs)    # (m,)
        self.offset = None if offset is None else as_tensor(offset)  # (m, n, n)
        self.n_contexts, self.n_actions = self.log_ref.shape
        # β may differ per context (a batch of stacked problems): stored as (m,).
        self.beta = as_tensor(beta).expand(self.n_contexts).clone() if np.ndim(beta) else \
            torch.full((self.n_contexts,), float(beta), dtype=DTYPE)
        self.has_kl = bool((self.beta > 0).any())

    # -- preference term ---------------------------------------------------------------------
    def _margins(self, z: Tensor) -> Tensor:
        d = z[:, :, None] - z[:, None, :]                # (m, n, n): d[x, i, j] = z_xi − z_xj
        return d if self.offset is None else d - self.offset

    def preference_values(self, z: Tensor) -> Tensor:
        """Σ_ij W ℓ(d) per context, shape (m,)."""
        return (self.W * self.margin.value(self._margins(z))).sum(dim=(1, 2))

    def preference_grad(self, z: Tensor) -> Tensor:
        """∂/∂z of the preference term, shape (m, n)."""
        G = self.W * self.margin.d1(self._margins(z))    # (m, n, n)
        return G.sum(dim=2) - G.sum(dim=1)

    def _preference_grad_hess(self, z: Tensor):
        d = self._margins(z)
        G = self.W * self.margin.d1(d)
        A = self.W * self.margin.d2(d)
        A = A + A.transpose(1, 2)                        # Laplacian edge weights, symmetric
        return G.sum(dim=2) - G.sum(dim=1), _laplacian(A)

    # -- KL term -----------------------------------------------------------------------------
    def kl(self, z: Tensor) -> Tensor:
        """KL(π_z ‖ π_ref) per context, shape (m,)."""
        logp = torch.log_softmax(z, dim=-1)
        return (logp.exp() * (logp - self.log_ref)).sum(dim=-1)

    def _kl_parts(self, z: Tensor) -> tuple:
        """(π, π⊙v, KL) per context, (m, n), (m, n), (m,), with v = log π − log π_ref − KL: ∇KL = π⊙v."""
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        g = logp - self.log_ref
        kl = (p * g).sum(dim=-1)
        return p, p * (g - kl[:, None]), kl

    def _kl_grad_hess(self, z: Tensor, need_hess: bool = True, add_to: Tensor | None = None,
                      weight: Tensor | None = None):
        """(∇KL (m, n), weight·∇²KL (m, n, n) or None, KL (m,)); with `add_to` the Hessian is added into it."""
        # With g = log π − log π_ref and v = g − KL: ∇KL = π⊙v and
        # ∇²KL = diag(π(1+v)) − ππᵀ − (π⊙v)πᵀ − π(π⊙v)ᵀ.
        p, pv, kl = self._kl_parts(z)
        if not need_hess:
            return pv, None, kl
        # The three rank-one terms as one batched product: [p, pv] @ [p + pv, p]ᵀ; with `add_to`,
        # weight·∇²KL is accumulated into that tensor in place (one pass, no temporary).
        w = torch.ones(p.shape[0], dtype=p.dtype) if weight is None else weight
        p_pv = p + pv                                                # π(1 + v)
        # Stacked as (m, 2, n), two contiguous copies, and used transposed (BLAS reads either layout).
        U = torch.stack((p, pv), dim=1).mul_(w[:, None, None])      # (m, 2, n)
        V = torch.stack((p_pv, p), dim=1)                            # (m, 2, n)
        if add_to is None:
            H = -torch.bmm(U.mT, V)
        else:
            H = add_to.baddbmm_(U.mT, V, alpha=-1.0)
        H.diagonal(dim1=1, dim2=2).add_(w[:, None] * p_pv)
        return pv, H, kl

    # -- the non-convex part N = β ρ KL, cheap (m, n) work -----------------------------------
    def nonconvex_values(self, z: Tensor) -> Tensor:
        """N(z) = β_x ρ_x KL(π_z ‖ π_ref) per context, shape (m,): the part of L that is not convex in z."""
        if not self.has_kl:
            return torch.zeros(z.shape[0], dtype=z.dtype)
        return self.beta * self.context_probs * self.kl(z)

    def split_derivatives(self, z: Tensor, need_hess: bool = True, out=None):
        """(∇L (m, n), ∇²L (m, n, n) or None, ∇N (m, n), N (m,)): the derivatives with the non-convex part N apart.

        `out`, where the objective supports it (SPOObjective), is a pair of (m, n, n) buffers to work
        in: the Hessian is returned in out[1], so the solver's iterations allocate no grid.
        """
        if need_hess:
            g, H = self._preference_grad_hess(z) if out is None else self._preference_grad_hess(z, out=out)
        else:
            g, H = self.preference_grad(z), None
        if not self.has_kl:
            return g, H, torch.zeros_like(z), torch.zeros(z.shape[0], dtype=z.dtype)
        w = self.beta * self.context_probs
        gk, H, kl = self._kl_grad_hess(z, need_hess=need_hess, add_to=H, weight=w)
        gn = w[:, None] * gk
        return g + gn, H, gn, w * kl

    # -- totals ------------------------------------------------------------------------------
    def context_mass(self) -> Tensor:
        """Σ_ij W[x] + β_x ρ_x per context, shape (m,): the scale of context x's gradient."""
        return self.W.sum(dim=(1, 2)) + self.beta * self.context_probs

    def quadratic_radius(self) -> Tensor:
        """Per context (m,), the step max_i |Δz_i| a solver takes whole without testing it: 0.05 · min(1, width).

        The softmax and the KL term bend over about a nat of logit, the margin loss over its width
        (1/α, 1/β): a longer Newton step can overshoot a wall of the objective and raise it.
        """
        return torch.full((self.n_contexts,), _QUADRATIC_RADIUS * min(1.0, self.margin.width), dtype=DTYPE)

    def values(self, z: Tensor) -> Tensor:
        """Per-context objective f_x(z_x), shape (m,); L = Σ_x f_x."""
        f = self.preference_values(z)
        if self.has_kl:
            f = f + self.beta * self.context_probs * self.kl(z)
        return f

    def value(self, z: Tensor) -> float:
        """L(z), a float."""
        return float(self.values(z).sum())

    def grad(self, z: Tensor) -> Tensor:
        """∇L(z), shape (m, n)."""
        return self.split_derivatives(z, need_hess=False)[0]

    def grad_hess(self, z: Tensor):
        """(∇L, ∇²L) of shapes (m, n) and (m, n, n)."""
        return self.split_derivatives(z)[:2]


def _log1p_exp(y: np.ndarray) -> np.ndarray:
    """log(1 + e^y) = −log σ(−y) elementwise, in place over a float64 array y (any shape).

    exp then log1p: accurate to a few ulps (e^y overflows only above y ≈ 709, where the stable form
    max(y, 0) + log1p(e^−|y|) takes over; e^y underflows harmlessly to log1p(0) = 0).
    """
    if y.size and float(y.max()) > 700.0:
        big = np.maximum(y, 0.0)
        np.abs(y, out=y)
        np.negative(y, out=y)
        np.exp(y, out=y)
        np.log1p(y, out=y)
        return np.add(y, big, out=y)
    np.exp(y, out=y)
    return np.log1p(y, out=y)


_EXP_SPAN = {torch.float64: 700.0, torch.float32: 80.0}   # e^−span stays a normal number


def pair_sigmoid(a: Tensor, out: Tensor | None = None, reverse: bool = False) -> Tensor:
    """σ(a_i − a_j) per row, (m, n) → (m, n, n) (with `reverse`, σ(a_j − a_i)), written into `out` when given.

    As e_i / (e_i + e_j) with e = exp(a − max a): one addition and one division pass over the grid
    and no transcendental one, 1.7× torch's sigmoid of the differences at (128, 64, 64) in float64
    and float32, to a few ulps; σ(0) = ½ exactly. Where a row's span of a would take e below the
    normal numbers (700 in float64, 80 in float32), and for other dtypes, the sigmoid of the differences.
    """
    span = _EXP_SPAN.get(a.dtype)
    if span is not None and a.numel():
        e = a - a.amax(dim=1, keepdim=True)
        if float(e.amin()) > -span:                # also False for NaN
            e = e.exp_()
            grid = torch.add(e[:, :, None], e[:, None, :], out=out)
            return torch.div(e[:, None, :] if reverse else e[:, :, None], grid, out=grid)
    first, second = (a[:, None, :], a[:, :, None]) if reverse else (a[:, :, None], a[:, None, :])
    return torch.sub(first, second, out=out).sigmoid_()


def _laplacian(A: Tensor) -> Tensor:
    """diag(A·1) − A for symmetric edge weights A (m, n, n), built in place (A is consumed)."""
    degree = A.sum(dim=2)
    H = A.neg_()
    H.diagonal(dim1=1, dim2=2).add_(degree)
    return H


class SPOObjective(PairwiseObjective):
    """SPEC §5 for SPO, with the preference derivatives fused into one sigmoid pass.

    With s = σ(−α(z_i − z_j)) and S = W + Wᵀ, the identity σ(t) = 1 − σ(−t) gives
    ∂/∂z_i = Σ_j W_ji − Σ_j S_ij s_ij and Laplacian weights α S s (1 − s) (already symmetric).
    With `uniform_shown` (every pair of distinct actions shown equally often in each context, as
    the uniform sampler's population mass is for any preference model, P + Pᵀ = 1), S is one
    number c_x per context and the derivatives never read a grid of it.
    """

    def __init__(self, pair_mass, *, alpha, beta, log_ref, context_probs, out: Tensor | None = None,
                 map_rows=None, uniform_shown: bool = False):
        # α and β may be floats or (m,) arrays: one value per context of a stacked batch. `out`, an
        # (m, n, n) float64 tensor, receives α(W + Wᵀ) (a caller's reused buffer: no fresh grid);
        # map_rows(fn, m) -> [fn(rows: slice)] runs the two grid passes below over row blocks (a
        # solver's thread pool), in order. `uniform_shown` is the caller's promise that
        # W_ij + W_ji = c_x for all i ≠ j (not checked).
        super().__init__(pair_mass, spo_margin(float(np.max(alpha))), beta=beta, log_ref=log_ref,
                         context_probs=context_probs)
        m = self.n_contexts
        self.alpha = as_tensor(alpha).expand(m).clone() if np.ndim(alpha) else \
            torch.full((m,), float(alpha), dtype=DTYPE)                     # (m,)
        self._alpha3 = self.alpha[:, None, None]                            # broadcast over pairs
        # values = convex preference term (−log σ is convex in z) + nonconvex_values (β·KL, cheap):
        # the solver bounds the first by its end slope along a step and evaluates only the second.
        self.split_convex = True
        # α S with S = W + Wᵀ the shown mass (symmetric): the Laplacian weights before σσ′. Only
        # this one extra (m, n, n) tensor is kept beside W; with uniform_shown, α c_x alone (m,).
        n = self.n_actions
        self.S_alpha = None if uniform_shown else torch.empty_like(self.W) if out is None else out
        self.shown_alpha = None

        def shown_and_lost(rows: slice) -> Tensor:
            W = self.W[rows]
            if self.S_alpha is not None:
                torch.add(W, W.transpose(1, 2), out=self.S_alpha[rows]).mul_(self._alpha3[rows])
            return W.sum(dim=1)                          # (rows, n) Σ_j W_ji: mass of losses of i

        parts = [shown_and_lost(slice(None))] if map_rows is None else map_rows(shown_and_lost, m)
        self.lost = parts[0] if len(parts) == 1 else torch.cat(parts)
        self._lost_half = self._shown = None
        if uniform_shown:
            # Σ_ij W_ij = c_x · n(n − 1)/2 (each unordered pair once in W + Wᵀ).
            self._shown = self.lost.sum(dim=1) * (2.0 / max(n * (n - 1), 1))          # c_x
            self.shown_alpha = self.alpha * self._shown
            self._lost_half = self.lost + 0.5 * self._shown[:, None]     # the s_ii = ½ terms, folded in

    def max_step(self) -> Tensor:
        """A solver's bound on one Newton step per context, max_i |Δz_i| ≤ max(2, 1/(2α)) where β > 0, else ∞ (m,).

        Where the KL term makes the Hessian indefinite the saddle-free step can be hundreds of nats
        long along directions of tiny curvature; capping it (a trust bound in logit units, wider
        for small α, whose logits spread like 1/α) spares the line search most of its halvings.
        """
        cap = torch.clamp(0.5 / self.alpha, min=2.0)
        return torch.where(self.beta > 0, cap, torch.full_like(cap, float("inf")))

    def quadratic_radius(self) -> Tensor:
        """0.05 · min(1, 1/α_x) per context (m,): PairwiseObjective.quadratic_radius with each context's α."""
        return _QUADRATIC_RADIUS * torch.clamp(1.0 / self.alpha, max=1.0)

    # Per-context fields that rows, subsets and casts carry along (None where unused).
    _ROW_FIELDS = ("S_alpha", "shown_alpha", "_shown", "_lost_half", "lost", "log_ref", "context_probs",
                   "beta", "alpha", "_alpha3")

    # W is needed only for objective values, which the solver rarely asks of a subset: a subset
    # copies its rows of W on first use (one (m, n, n) copy fewer per retirement of contexts).
    @property
    def W(self) -> Tensor:
        W = self.__dict__["_W"]
        if W is None:
            parent, keep = self.__dict__.pop("_W_rows")
            W = self.__dict__["_W"] = parent.W[keep]
        return W

    @W.setter
    def W(self, value: Tensor) -> None:
        self.__dict__["_W"] = value

    def rows(self, start: int, stop: int) -> "SPOObjective":
        """The same objective on contexts start..stop−1, sharing this one's memory (views, no copies)."""
        out = object.__new__(SPOObjective)
        out.__dict__.update(self.__dict__)
        for name in ("_W",) + self._ROW_FIELDS:
            value = self.W if name == "_W" else getattr(self, name)
            setattr(out, name, None if value is None else value[start:stop])
        out.n_contexts = stop - start
        if self.offset is not None:
            out.offset = self.offset[start:stop]
        return out

    def astype(self, dtype: torch.dtype) -> "SPOObjective":
        """The same objective computing its derivatives in `dtype` (float32: a solver's cheap early Newton
        iterations); W, and so the objective values, stay as they are."""
        out = object.__new__(SPOObjective)
        out.__dict__.update(self.__dict__)
        for name in self._ROW_FIELDS:
            value = getattr(self, name)
            setattr(out, name, None if value is None else value.to(dtype))
        return out

    def subset(self, keep: Tensor, out_grid: Tensor | None = None) -> "SPOObjective":
        """The same objective restricted to the contexts where `keep` (m,) is True; `out_grid`, a (k, n, n)
        float64 tensor not sharing memory with this objective, receives the kept rows of α(W + Wᵀ)."""
        out = object.__new__(SPOObjective)
        out.__dict__.update(self.__dict__)
        out.__dict__["_W"], out.__dict__["_W_rows"] = None, (self, keep)
        for name in self._ROW_FIELDS:
            value = getattr(self, name)
            if name == "S_alpha" and value is not None and out_grid is not None:
                out.S_alpha = torch.index_select(value, 0, keep.nonzero()[:, 0], out=out_grid)
            else:
                setattr(out, name, None if value is None else value[keep])
        out.n_contexts = int(keep.sum())
        if self.offset is not None:
            out.offset = self.offset[keep]
        return out

    def context_mass(self) -> Tensor:
        # Σ_ij W_ij = Σ_i (Σ_j W_ji): from the losses already summed, no pass over W.
        return self.lost.sum(dim=1) + self.beta * self.context_probs

    def preference_values(self, z: Tensor, out=None) -> Tensor:
        # −(1/α) log σ(αd), with α folded into z first (one pass fewer), as log of torch's sigmoid
        # (vectorised, at torch's threads) by numpy's vectorised log, where no σ underflows; else as
        # (1/α) log(1 + e^−αd) by numpy's exp and log1p. Both 3–7× faster than torch's float64
        # log-sigmoid kernel, whose speed also depends on the data. With `out`, in the caller's
        # (m, n, n) buffers: no grid-sized allocation.
        az = self.alpha[:, None] * z
        if z.device.type != "cpu" or (out is None and torch.is_grad_enabled()
                                      and (z.requires_grad or self.W.requires_grad)):
            # on a GPU, or differentiable (autograd checks of the derivatives): torch's own log-sigmoid
            ls = F.logsigmoid(az[:, :, None] - az[:, None, :])
            return -torch.einsum("xij,xij->x", self.W, ls) / self.alpha
        buf = None if out is None else out[0]
        if float((az.amin(dim=1) - az.amax(dim=1)).min()) > -700.0:       # min αd, in O(mn)
            # σ(x) ≥ e^−700 keeps its relative accuracy; where it rounds to 1 (x > 37) log σ(x) = −e^−x
            # is below 1e-16: the terms' absolute error stays at round-off.
            x = pair_sigmoid(az, out=buf)                                # σ(αd)
            np.log(x.numpy(), out=x.numpy())                             # log σ(αd)
            sign = -1.0
        else:
            x = torch.sub(az[:, :, None], az[:, None, :], out=buf)      # αd
            _log1p_exp(x.neg_().numpy())                                 # −log σ(αd) = log(1 + e^−αd)
            sign = 1.0
        return torch.mul(self.W, x, out=None if out is None else out[1]).sum(dim=(1, 2)).mul_(sign) / self.alpha

    def values(self, z: Tensor, out=None) -> Tensor:
        """Per-context objective f_x(z_x), shape (m,); `out` as in split_derivatives."""
        f = self.preference_values(z, out=out)
        if self.has_kl:
            f = f + self.beta * self.context_probs * self.kl(z)
        return f

    def _sig(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        return pair_sigmoid(self.alpha[:, None] * z, out=out, reverse=True)     # s = σ(−α(z_i − z_j))

    def _uniform_shown_grad(self, row_sums: Tensor) -> Tensor:
        # From row_sums = Σ_j s_ij: Σ_{j≠i} c s_ij = c (Σ_j s_ij − s_ii), s_ii = σ(0) = ½ exactly.
        return torch.addcmul(self._lost_half, self._shown[:, None], row_sums, value=-1.0)

    def preference_grad(self, z: Tensor) -> Tensor:
        if self.S_alpha is None:
            return self._uniform_shown_grad(self._sig(z).sum(dim=2))
        return self.lost - torch.einsum("xij,xij->xi", self.S_alpha, self._sig(z)) / self.alpha[:, None]

    def grad_hess_diag(self, z: Tensor, out=None):
        """(∇L (m, n), diag ∇²L (m, n)) without building the Hessian; `out` as in split_derivatives. For a
        solver's check of a start that is already the minimiser."""
        g, diag, _, _ = self.split_grad_diag(z, out=out)
        return g, diag

    def split_grad_diag(self, z: Tensor, out=None):
        """(∇L (m, n), diag ∇²L (m, n), ∇N (m, n), N (m,)): split_derivatives with the Hessian's diagonal
        in place of the Hessian, from one read of the σ grid (diag ∇²KL = π(1 + v) − π² − 2π²v)."""
        g, diag = self._preference_grad_diag(z, out=out)
        if not self.has_kl:
            return g, diag, torch.zeros_like(z), torch.zeros(z.shape[0], dtype=z.dtype)
        w = self.beta * self.context_probs
        p, pv, kl = self._kl_parts(z)
        gn = w[:, None] * pv
        diag = diag + w[:, None] * (p + pv - p * (p + 2.0 * pv))
        return g + gn, diag, gn, w * kl

    def kernel_hessian(self, z: Tensor, k: int, with_kl: bool = True) -> tuple:
        """∇²L(z) ≈ diag(D) + V G Vᵀ, its σ′ weights interpolated at k Chebyshev nodes (lowrank.py), for
        uniform_shown objectives: (D (m, n), Vᵀ (m, r, n), G (m, r, r)), r = k + 2 with the KL term (its
        rank-2 part as the columns π, π⊙v), else k (also with with_kl=False: the preference term's
        alone). The Laplacian a(diag(B̃1) − B̃) of B̃ = T A Tᵀ is exactly singular along 1, like ∇²L: a
        solver adds its gauge."""
        if self.S_alpha is not None:
            raise ValueError("kernel_hessian needs uniform_shown (every pair shown equally often in a context)")
        m, n = z.shape
        with_kl = with_kl and self.has_kl
        r = k + 2 if with_kl else k
        Vt = torch.empty(m, r, n, dtype=z.dtype)
        Tt, A = sigmoid_kernel(self.alpha.to(z.dtype)[:, None] * z, k, out=Vt)
        a = self.shown_alpha.to(z.dtype)
        y = (A * Tt.sum(dim=2)[:, None, :]).sum(dim=2)                 # A Tᵀ1 (m, k)
        D = (y[:, :, None] * Tt).sum(dim=1).mul_(a[:, None])            # a B̃1 (m, n)
        G = torch.zeros(m, r, r, dtype=z.dtype)
        G[:, :k, :k] = A.mul_(-a[:, None, None])
        if with_kl:
            w = (self.beta * self.context_probs).to(z.dtype)
            p, pv, _ = self._kl_parts(z)
            D.addcmul_(w[:, None], p + pv)
            Vt[:, k].copy_(p)
            Vt[:, k + 1].copy_(pv)
            G[:, k, k] = G[:, k, k + 1] = G[:, k + 1, k] = -w
        return D, Vt, G

    def _preference_grad_diag(self, z: Tensor, out=None):
        s = self._sig(z, None if out is None else out[0])
        if self.S_alpha is None:
            # H_ii = α c Σ_{j≠i} s_ij(1 − s_ij) = α c (Σ_j s_ij − Σ_j s_ij² − ¼)
            rs = s.sum(dim=2)
            g = self._uniform_shown_grad(rs)
            # Σ_j s_ij² as a squared row norm: one read of the grid (2.5× an einsum's speed)
            return g, (rs - torch.linalg.vector_norm(s, dim=2).square_() - 0.25) * self.shown_alpha[:, None]
        Ss = torch.mul(self.S_alpha, s, out=None if out is None else out[1])      # α S s
        rs = Ss.sum(dim=2)
        return self.lost - rs / self.alpha[:, None], rs - torch.linalg.vecdot(Ss, s, dim=2)

    def _preference_grad_hess(self, z: Tensor, out=None):
        s = self._sig(z, None if out is None else out[0])
        if self.S_alpha is None:
            # Laplacian of α c s(1 − s): the diagonal term s_ii(1 − s_ii) cancels in diag(A·1) − A.
            g = self._uniform_shown_grad(s.sum(dim=2))
            B = torch.addcmul(s, s, s, value=-1.0, out=None if out is None else out[1])    # s(1 − s)
            a = self.shown_alpha[:, None]
            degree = B.sum(dim=2).mul_(a)
            H = B.mul_(-a[:, :, None])
            H.diagonal(dim1=1, dim2=2).add_(degree)
            return g, H
        Ss = torch.mul(self.S_alpha, s, out=None if out is None else out[1])      # α S s
        g = self.lost - Ss.sum(dim=2) / self.alpha[:, None]
        A = Ss.addcmul_(Ss, s, value=-1.0)                         # α S s (1 − s), symmetric
        return g, _laplacian(A)
