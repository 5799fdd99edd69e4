"""Exact minimisation of the hinge (SLiC) objective as a linear program, with a checkable certificate.

    min_g Σ_{(i,j): W_ij > 0} W_ij max(0, 1 − β (g_i − g_j)),   g = z − log π_ref (per context)

is the LP  min Σ W_e ξ_e  s.t.  ξ_e ≥ 0,  ξ_e + β (g_i − g_j) ≥ 1. Its dual is a maximum circulation:
max Σ λ_e over flows 0 ≤ λ_e ≤ W_e with inflow = outflow at every action. "Exact" here means:
HiGHS (dual simplex) returns a vertex, and we certify it with the dual flow λ it reports — feasible
(bounds and conservation checked by us) with Σ λ = the primal value up to `gap`, so by weak duality
no policy does better than value − gap. Complementary slackness with that λ describes the whole
optimal set as difference constraints (0 < λ_e < W_e ⇒ β u_e = 1; λ_e = W_e ⇒ β u_e ≤ 1; λ_e = 0 ⇒
β u_e ≥ 1); shortest paths over them give the range of every g_a − g_0 on the optimal set, so the
minimiser is declared unique iff every range has zero width. Hinge minimisers are often not unique.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix


@dataclass(frozen=True)
class HingeLPResult:
    """Per-context LP solution: g (m, n) with g_0 = 0, values, dual flows and the certificate numbers."""

    g: np.ndarray             # (m, n) one optimal g = z − log π_ref, gauge g_0 = 0
    value: np.ndarray         # (m,) primal objective Σ W max(0, 1 − β u) at g
    dual_value: np.ndarray    # (m,) Σ λ of the certified dual flow (a lower bound on every policy's value)
    flow: np.ndarray          # (m, n, n) λ[x, i, j] on the edge i beat j
    width: np.ndarray         # (m,) max_a (range of g_a − g_0 over the optimal set); 0 ⇔ unique; inf if unbounded
    dual_violation: np.ndarray  # (m,) max violation of 0 ≤ λ ≤ W and flow conservation
    ok: np.ndarray            # (m,) bool: HiGHS reported an optimum
    message: str


def _floyd_warshall(D: np.ndarray) -> np.ndarray:
    """All-pairs shortest paths for a batch of weight matrices (m, n, n) (inf = no edge)."""
    D = D.copy()
    for k in range(D.shape[1]):
        np.minimum(D, D[:, :, k, None] + D[:, None, k, :], out=D)
    return D


def solve_hinge_lp(pair_mass: np.ndarray, *, beta: float, tol: float = 1e-9) -> HingeLPResult:
    """Minimise Σ_ij W_ij max(0, 1 − β(g_i − g_j)) per context exactly (LP + dual certificate); W (m, n, n)."""
    W = np.asarray(pair_mass, dtype=np.float64)
    m, n, _ = W.shape
    g = np.zeros((m, n))
    value = np.zeros(m)
    dual_value = np.zeros(m)
    flow = np.zeros((m, n, n))
    ok = np.ones(m, dtype=bool)
    messages = []
    for x in range(m):                           # contexts are independent LPs
        i, j = np.nonzero(W[x] > 0)
        E = i.size
        if E == 0:
            continue                             # no data: every g is optimal (value 0)
        scale = W[x].sum()
        w = W[x, i, j] / scale                   # rescaled so the LP's absolute tolerances are meaningful
        # Variables [g_0..g_{n−1}, ξ_1..ξ_E]; row e: −β g_i + β g_j − ξ_e ≤ −1.
        rows = np.repeat(np.arange(E), 3)
        cols = np.stack((i, j, n + np.arange(E)), axis=1).ravel()
        vals = np.tile([-beta, beta, -1.0], E)
        A = coo_matrix((vals, (rows, cols)), shape=(E, n + E)).tocsr()
        c = np.concatenate((np.zeros(n), w))
        bounds = [(0.0, 0.0)] + [(None, None)] * (n - 1) + [(0.0, None)] * E
        res = linprog(c, A_ub=A, b_ub=-np.ones(E), bounds=bounds, method="highs-ds",
                      options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
        if res.status != 0:
            ok[x] = False
            messages.append(f"context {x}: HiGHS status {res.status} ({res.message})")
            continue
        g[x] = res.x[:n]
        lam = np.clip(-res.ineqlin.marginals, 0.0, None) * scale   # dual flow in the original units
        flow[x, i, j] = lam
        dual_value[x] = lam.sum()
    # Primal value recomputed from g (not taken from the LP), in the original units.
    u = g[:, :, None] - g[:, None, :]
    value = (W * np.maximum(0.0, 1.0 - beta * u)).sum(axis=(1, 2))
    # Dual feasibility: 0 ≤ λ ≤ W (λ = 0 off the support) and conservation at every action.
    over = np.maximum(flow - W, 0.0).max(axis=(1, 2))
    imbalance = np.abs(flow.sum(axis=2) - flow.sum(axis=1)).max(axis=1)
    dual_violation = np.maximum(over, imbalance)
    width = _optimal_set_width(W, flow, beta, tol)
    message = "; ".join(messages) if messages else "HiGHS optimum in every context"
    return HingeLPResult(g=g, value=value, dual_value=dual_value, flow=flow, width=width,
                         dual_violation=dual_violation, ok=ok, message=message)


def _optimal_set_width(W, flow, beta, tol):
    """max_a [max − min of g_a − g_0 over the optimal set], from the difference constraints of complementary slackness."""
    m, n, _ = W.shape
    support = W > 0
    cap = tol * W.sum(axis=(1, 2), keepdims=True)
    at_zero = support & (flow <= cap)
    at_top = support & (flow >= W - cap)
    inside = support & ~at_zero & ~at_top
    # u_ij = g_i − g_j. "g_a − g_b ≤ c" is the edge b → a with weight c in D[b, a].
    D = np.full((m, n, n), np.inf)
    idx = np.arange(n)
    D[:, idx, idx] = 0.0
    upper = at_top | inside                      # β u_ij ≤ 1:  g_i − g_j ≤ 1/β  → edge j → i
    lower = at_zero | inside                     # β u_ij ≥ 1:  g_j − g_i ≤ −1/β → edge i → j
    D = np.where(upper.transpose(0, 2, 1), np.minimum(D, 1.0 / beta), D)
    D = np.where(lower, np.minimum(D, -1.0 / beta), D)
    dist = _floyd_warshall(D)
    with np.errstate(invalid="ignore"):
        width = (dist[:, 0, :] + dist[:, :, 0]).max(axis=1)   # max(g_a − g_0) − min(g_a − g_0)
    # A negative cycle would mean the certificate is inconsistent: report an infinite width then.
    inconsistent = (np.diagonal(dist, axis1=1, axis2=2) < -1e-9 / beta).any(axis=1)
    empty = ~support.any(axis=(1, 2))
    return np.where(inconsistent | empty, np.inf, np.maximum(width, 0.0))
