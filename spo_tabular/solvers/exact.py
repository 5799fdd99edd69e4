"""Deterministic solver for the exact tabular objective, to machine precision (SPEC §5).

Batched damped Newton over contexts (they are independent): per iteration one pass over W for
the gradient and the Laplacian Hessian, a batched Cholesky solve (m systems of size n) and a
per-context Armijo backtracking line search. The start is the weighted log-odds least-squares
fit, which is already exact for consistent Bradley–Terry mass; Newton then converges
quadratically. The constant direction (logits are defined up to a per-context shift) is fixed by
a rank-one gauge term; an indefinite KL Hessian is handled by Levenberg–Marquardt damping.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import _validation as v
from ..graphs import comparison_graph
from ..objectives import DTYPE, PairwiseObjective, SPOObjective, _laplacian
from ..preferences import PairData, pair_probs, preference_matrix
from ..problems import TabularProblem


class NoFiniteMinimizerWarning(RuntimeWarning):
    """The objective has no finite minimiser: some context's beats graph is not strongly connected."""


class NonUniqueMinimizerWarning(RuntimeWarning):
    """The objective's minimisers form a continuum: some context's comparison graph is disconnected."""


class ConvergenceWarning(RuntimeWarning):
    """The solver stopped before reaching its tolerance."""


@dataclass(frozen=True)
class SolveResult:
    """Solver output in the manner of scipy.optimize: policy and logits (m, n) float64, status and message."""

    policy: np.ndarray      # (n_contexts, n_actions) π = softmax(logits)
    logits: np.ndarray      # (n_contexts, n_actions) normalised: log π
    loss: float             # objective value at the solution
    grad_norm: float        # max |∂L/∂z| at the solution
    n_iter: int
    converged: bool
    message: str
    status: str = "converged"   # converged | not_unique | no_finite_minimizer | max_iter
    history: object = field(default=None, repr=False)  # optional per-step DataFrame (SGD)


def _log_odds_start(W: torch.Tensor, alpha, ridge: torch.Tensor) -> torch.Tensor:
    """Weighted least squares u_i − u_j ≈ log(W_ij / W_ji) (a graph-Laplacian system), returned as z = u/α.

    Exact for consistent Bradley–Terry mass. `ridge` (m,) bool marks contexts whose graph is
    disconnected: a tiny ridge there pins the directions the data leave free.
    """
    m, n, _ = W.shape
    Wt = W.transpose(1, 2)
    c = W + Wt                                               # shown mass of the pair, symmetric
    floor = 0.5 * W[W > 0].min() if bool((W > 0).any()) else torch.tensor(1.0, dtype=DTYPE)
    # A one-way pair has an infinite log-odds; half the smallest mass (Haldane-style) keeps it finite.
    L = torch.where(c > 0, torch.log(torch.clamp(W, min=floor)) - torch.log(torch.clamp(Wt, min=floor)), 0.0)
    system = _laplacian(c.clone())
    b = (c * L).sum(dim=2)
    scale = c.sum(dim=(1, 2)).clamp(min=torch.finfo(DTYPE).tiny) / n          # (m,)
    system += scale[:, None, None] / n                       # gauge: fixes the mean logit
    system.diagonal(dim1=1, dim2=2).add_((1e-10 * scale * ridge)[:, None])
    alpha = torch.as_tensor(alpha, dtype=DTYPE).reshape(-1, 1)   # float or (m,) per context
    chol, info = torch.linalg.cholesky_ex(system)
    if bool((info != 0).any()):   # only a badly scaled graph gets here
        return torch.linalg.lstsq(system, b[..., None]).solution[..., 0] / alpha
    return torch.cholesky_solve(b[..., None], chol)[..., 0] / alpha


def _newton_direction(g: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Solve (H + gauge + λI) d = −g per context; λ grows only where the Cholesky factorisation fails."""
    m, n = g.shape
    diag_scale = torch.diagonal(H, dim1=1, dim2=2).abs().mean(dim=1)
    fallback = diag_scale.max() if bool((diag_scale > 0).any()) else torch.tensor(1.0, dtype=DTYPE)
    diag_scale = torch.where(diag_scale > 0, diag_scale, fallback)
    eye = torch.eye(n, dtype=DTYPE)
    system = H + diag_scale[:, None, None] * torch.ones(n, n, dtype=DTYPE) / n
    chol, info = torch.linalg.cholesky_ex(system)
    lam = 1e-12 * diag_scale
    for _ in range(40):
        bad = info != 0
        if not bool(bad.any()):
            break
        system[bad] = system[bad] + lam[bad, None, None] * eye
        chol_bad, info_bad = torch.linalg.cholesky_ex(system[bad])
        chol[bad], info[bad] = chol_bad, info_bad
        lam = lam * 100.0
    d = torch.cholesky_solve(-g[..., None], chol)[..., 0]
    return d - d.mean(dim=1, keepdim=True)


def _newton(obj: PairwiseObjective, z: torch.Tensor, *, tol: float, max_iter: int):
    """Damped Newton until the diagonally scaled gradient max |∂L/∂z_i| / ∂²L/∂z_i² ≤ tol.

    That ratio estimates the remaining error in each logit. Returns (z, ‖∇L‖∞, n_iter, ok, err).
    """
    tiny = torch.finfo(DTYPE).tiny
    floor = 1e-300 + 1e-30 * obj.context_mass()[:, None]
    f = obj.values(z)
    err = float("inf")
    for it in range(max_iter + 1):
        g, H = obj.grad_hess(z)
        err = float((g.abs() / torch.diagonal(H, dim1=1, dim2=2).abs().clamp(min=floor)).max())
        if err <= tol:
            return z, float(g.abs().max()), it, True, err
        if it == max_iter:
            break
        d = _newton_direction(g, H)
        slope = (g * d).sum(dim=1)                                  # < 0 for a descent direction
        t = torch.ones_like(f)
        slack = 1e-13 * (f.abs() + tiny)                           # roundoff allowance near the optimum
        for _ in range(60):
            z_new = z + t[:, None] * d
            f_new = obj.values(z_new)
            ok = f_new <= f + 1e-4 * t * slope + slack
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        step = float((t[:, None] * d).abs().max())
        z, f = z_new, f_new
        if step <= 4 * torch.finfo(DTYPE).eps * (1.0 + float(z.abs().max())):
            # Stalled at round-off: no representable step improves the objective any more.
            g, H = obj.grad_hess(z)
            err = float((g.abs() / torch.diagonal(H, dim1=1, dim2=2).abs().clamp(min=floor)).max())
            return z, float(g.abs().max()), it + 1, err <= max(tol, 1e-9), err
    return z, float(g.abs().max()), max_iter, False, err


def _objective_inputs(problem, data, sampler, preference):
    """Pair mass W (m, n, n) and the beats support used for the existence check."""
    if data is None:
        q = pair_probs(problem, sampler)
        P = preference_matrix(problem, preference)
        shown = q + q.transpose(0, 2, 1)
        W = problem.context_probs[:, None, None] * shown * P
        # Under Bradley–Terry P ∈ (0, 1) exactly, even where exp underflows: use the shown support.
        beats = (shown > 0) if preference is None else (shown > 0) & (P > 0)
        return W, beats
    if not isinstance(data, PairData):
        raise TypeError(f"data must be a PairData or None, got {type(data).__name__}")
    if (data.n_contexts, data.n_actions) != (problem.n_contexts, problem.n_actions):
        raise ValueError(f"data has (n_contexts, n_actions) = {(data.n_contexts, data.n_actions)}, "
                         f"problem has {(problem.n_contexts, problem.n_actions)}")
    W = data.pair_mass()
    return W, W > 0


def _result(obj, z, grad_norm, n_iter, converged, status, message) -> SolveResult:
    logits = torch.log_softmax(z, dim=-1)
    return SolveResult(policy=logits.exp().numpy(), logits=logits.numpy(), loss=obj.value(z),
                       grad_norm=grad_norm, n_iter=n_iter, converged=converged, message=message,
                       status=status)


def solve_exact(problem: TabularProblem, *, alpha: float, beta: float = 0.0, data: PairData | None = None,
                sampler="uniform", preference=None, weights=None, tol: float = 1e-12,
                max_iter: int = 100) -> SolveResult:
    """argmin_z −(1/α) Σ W μ log σ(α(z_i − z_j)) + β Σ_x ρ_x KL(π_z‖π_ref): population (data=None) or empirical W."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    alpha = v.positive_float("alpha", alpha)
    beta = v.nonnegative_float("beta", beta)
    tol = v.positive_float("tol", tol)
    max_iter = v.positive_int("max_iter", max_iter)
    W, beats = _objective_inputs(problem, data, sampler, preference)
    if weights is not None:
        mu = v.float_array("weights", weights, shape=W.shape)
        if np.any(mu < 0):
            raise ValueError("weights must be non-negative")
        W = W * mu
        beats = beats & (mu > 0)
    obj = SPOObjective(W, alpha=alpha, beta=beta, log_ref=problem.log_ref,
                       context_probs=problem.context_probs)
    graph = comparison_graph(beats)
    z0 = _log_odds_start(obj.W, alpha, torch.from_numpy(~graph.unique))

    if beta == 0.0 and graph.unbounded.any():
        bad = np.flatnonzero(graph.unbounded)
        message = (f"no finite minimiser: the beats graph of {bad.size} context(s) (first: {bad[:5].tolist()}) "
                   "is not strongly connected, so with beta=0 some probabilities run to 0; "
                   "use beta > 0 or more data")
        warnings.warn(message, NoFiniteMinimizerWarning, stacklevel=2)
        return _result(obj, z0, float(obj.grad(z0).abs().max()), 0, False, "no_finite_minimizer", message)

    z, grad_norm, n_iter, converged, err = _newton(obj, z0, tol=tol, max_iter=max_iter)
    if not converged:
        message = (f"stopped after {n_iter} Newton iterations: scaled gradient {err:.3g} > tol={tol:g} "
                   f"(gradient norm {grad_norm:.3g})")
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
        return _result(obj, z, grad_norm, n_iter, False, "max_iter", message)
    if beta == 0.0 and graph.non_unique.any():
        bad = np.flatnonzero(graph.non_unique)
        message = (f"minimiser not unique: the comparison graph of {bad.size} context(s) (first: {bad[:5].tolist()}) "
                   "is disconnected, so the mass between its components is free; returned the one with equal "
                   "mean logit per component (beta > 0 selects a unique one)")
        warnings.warn(message, NonUniqueMinimizerWarning, stacklevel=2)
        return _result(obj, z, grad_norm, n_iter, True, "not_unique", message)
    return _result(obj, z, grad_norm, n_iter, True, "converged",
                   f"converged in {n_iter} Newton iterations (scaled gradient {err:.2e}, gradient norm {grad_norm:.2e})")
