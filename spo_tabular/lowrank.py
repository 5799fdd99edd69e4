"""Low-rank Newton systems for the SPO objective: the σ′ kernel on a line, and Woodbury solves.

With every pair of actions shown equally often, the SPO preference Hessian of a context is the
graph Laplacian a·(diag(B1) − B) of the weights B_ij = σ′(x_i − x_j), x = αz (a = α c_x). σ′ is a
smooth shift-invariant kernel of one-dimensional points, analytic in the strip |Im u| < π, so B is
numerically low rank: interpolating σ′(x − y) in both arguments at k Chebyshev nodes on the span
of x gives B ≈ T A Tᵀ, T the (n, k) Chebyshev polynomials at the scaled points, with an error that
falls like ρ^−k, ρ = π/h + √(1 + (π/h)²) for a half-span h. The Newton matrix is then a diagonal
plus a rank-(k + 2) term (with the KL's rank-2 part), solved by the Woodbury identity in O(n k²)
per context instead of a Cholesky factorisation's O(n³) and without building the (n, n) Hessian.
(docs/performance.md, the eleventh round, has the measurements.)
"""
from __future__ import annotations

import functools
import math

import torch

Tensor = torch.Tensor

# Measured (h 0.5–12, k 4–32): the largest error of T A Tᵀ against σ′(x_i − x_j), relative to
# σ′(0) = 1/4, stays below _ERR_SCALE · ρ^(−_ERR_RATE · k).
_ERR_SCALE = 40.0
_ERR_RATE = 0.9


def chebyshev_rank(half_span: float, tol: float) -> int:
    """The number of Chebyshev nodes k that interpolate σ′(x − y) on a span of half-width h to within
    tol·σ′(0): k = ⌈log(40/tol) / (0.9 asinh(π/h))⌉ (log ρ = asinh(π/h)), at least 2."""
    log_rho = math.asinh(math.pi / max(half_span, 1e-12))
    return max(2, math.ceil(math.log(_ERR_SCALE / tol) / (_ERR_RATE * log_rho)))


def chebyshev_half_span(k: int, tol: float) -> float:
    """The widest half-span h whose σ′ kernel k Chebyshev nodes interpolate to within tol·σ′(0) (chebyshev_rank's inverse)."""
    return math.pi / math.sinh(math.log(_ERR_SCALE / tol) / (_ERR_RATE * k))


@functools.lru_cache(maxsize=64)
def _chebyshev_tables(k: int, dtype: torch.dtype) -> tuple:
    """(node differences ξ_p − ξ_q (k, k), the map from node values f(ξ_p, ξ_q) to 2-D Chebyshev
    coefficients as a (k², k²) matrix acting on row-major k × k values): first-kind nodes on [−1, 1]."""
    idx = torch.arange(k, dtype=torch.float64)
    nodes = torch.cos((2 * idx + 1) * math.pi / (2 * k))
    C = torch.cos(idx[:, None] * torch.arccos(nodes)[None, :]) * (2.0 / k)     # c_q = Σ_p C_qp f(ξ_p)
    C[0] *= 0.5
    # A = C F Cᵀ as one product: vec(A) = vec(F) (C ⊗ C)ᵀ for row-major vec.
    return (nodes[:, None] - nodes[None, :]).to(dtype), torch.kron(C, C).T.contiguous().to(dtype)


def sigmoid_kernel(x: Tensor, k: int, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """σ′(x_i − x_j) ≈ Σ_pq T_p(ξ_i) A_pq T_q(ξ_j) per row of x (m, n): (Tᵀ (m, k, n), A (m, k, k)).

    ξ maps each row's [min x, max x] affinely onto [−1, 1]; T_p are the Chebyshev polynomials (by
    their recurrence), A = C F Cᵀ with F = σ′ at the differences of k Chebyshev nodes mapped to the
    row's span. `out`, an (m, r, n) tensor with r ≥ k, receives Tᵀ in its first k rows (a caller's
    larger basis); A is symmetric positive semi-definite (σ′ is a positive definite kernel).
    """
    m, n = x.shape
    diffs, coeffs = _chebyshev_tables(k, x.dtype)
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    h = (hi - lo).mul_(0.5).clamp_(min=torch.finfo(x.dtype).tiny)
    Tt = torch.empty(m, k, n, dtype=x.dtype) if out is None else out[:, :k]
    T = Tt.unbind(dim=1)                                          # the k rows, as views
    T[0].fill_(1.0)
    if k > 1:
        xi = torch.sub(x, lo, out=T[1]).div_(h).sub_(1.0).clamp_(-1.0, 1.0)
        xi2 = xi * 2.0
        for q in range(2, k):                                     # T_q = 2ξ T_{q−1} − T_{q−2}
            torch.mul(xi2, T[q - 1], out=T[q]).sub_(T[q - 2])
    s = torch.sigmoid(h[:, :, None] * diffs)
    F = s.mul_(1.0 - s)                                           # σ′ at the node differences
    A = torch.mm(F.reshape(m, k * k), coeffs).view(m, k, k)
    return Tt, A


def woodbury_step(g: Tensor, D: Tensor, Vt: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """(d, ok): d = −(diag(D) + V G Vᵀ)⁻¹ g per context, for g, D (m, n), Vᵀ (m, r, n), G (m, r, r).

    M⁻¹ = D⁻¹ − D⁻¹V (I + G VᵀD⁻¹V)⁻¹ G VᵀD⁻¹: one r × r LU per context, no inverse of G (whose
    kernel block is as ill-conditioned as the kernel matrix at the nodes). ok (m,) is False where the
    step is not finite (D or the r × r system singular).
    """
    r = Vt.shape[1]
    Dinv = D.reciprocal()
    Yt = Vt * Dinv[:, None, :]                                   # (D⁻¹V)ᵀ
    P = torch.bmm(Vt, Yt.mT)                                      # VᵀD⁻¹V (m, r, r)
    C = torch.baddbmm(torch.eye(r, dtype=P.dtype), G, P)
    rhs = torch.bmm(G, (Yt * g[:, None, :]).sum(dim=2)[:, :, None])
    u = torch.linalg.solve_ex(C, rhs)[0]
    d = (u * Yt).sum(dim=1).sub_(g * Dinv)
    return d, torch.isfinite(d).all(dim=1)
