"""Deterministic solver for the exact tabular objective, to machine precision (SPEC §5).

Batched damped Newton over contexts (they are independent): per iteration one pass over W for
the gradient and the Laplacian Hessian, a batched Cholesky solve (m systems of size n) and a
per-context Armijo backtracking line search. The start is the weighted log-odds least-squares
fit, which is already exact for consistent Bradley–Terry mass; Newton then converges
quadratically. The constant direction (logits are defined up to a per-context shift) is fixed by
a rank-one gauge term; an indefinite KL Hessian is handled by Levenberg–Marquardt damping.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .. import _validation as v
from ..choice_sets import data_events, pair_weights_from_samples, population_events
from ..graphs import comparison_graph
from ..objectives import DTYPE, PairwiseObjective, SPOObjective, _laplacian
from ..objectives_zoo import ChoiceObjective, CPOObjective, dpo_objective, hinge_objective, ipo_objective
from ..preferences import BestOfNData, PairData, RankedData, pair_probs, preference_matrix
from ..problems import TabularProblem
from .hinge_lp import solve_hinge_lp


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


def _solve_spo(problem: TabularProblem, *, alpha: float, beta: float = 0.0, data: PairData | None = None,
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


# =========================================================================== the loss zoo (SPEC §4–§6)
# solve_exact looks the loss up in LOSS_SOLVERS; every smooth loss builds its objective and reuses
# _newton; hinge is piecewise linear and goes to an LP with a dual certificate (hinge_lp.py).

@dataclass(frozen=True)
class _LossSolver:
    """How solve_exact handles one loss: its solver, the loss parameters it takes, the data it accepts."""

    solve: Callable
    params: tuple
    data_types: tuple


def _required(name: str, value, loss: str):
    if value is None:
        raise TypeError(f"{name} is required for loss={loss!r}")
    return value


def _pair_inputs(problem, data, sampler, preference, weights):
    """(W ⊙ μ, beats) for the pairwise baselines; μ is (m, n, n) per pair or (N,) per sample of PairData."""
    W, beats = _objective_inputs(problem, data, sampler, preference)
    if weights is not None:
        if data is not None and np.ndim(weights) == 1:
            mu = pair_weights_from_samples(data, weights)
        else:
            mu = v.float_array("weights", weights, shape=W.shape)
            if np.any(mu < 0):
                raise ValueError("weights must be non-negative")
        W = W * mu
        beats = beats & (mu > 0)
    return W, beats


def _finish(obj, z0, *, unbounded, non_unique, tol, max_iter, loss) -> SolveResult:
    """Newton from z0 with the same reporting as the SPO path: no finite minimiser / not converged / not unique."""
    if unbounded.any():
        bad = np.flatnonzero(unbounded)
        message = (f"{loss}: no finite minimiser in {bad.size} context(s) (first: {bad[:5].tolist()}): "
                   "some probabilities run to 0 (the beats graph is not strongly connected); "
                   "add data or a KL term")
        warnings.warn(message, NoFiniteMinimizerWarning, stacklevel=4)
        return _result(obj, z0, float(obj.grad(z0).abs().max()), 0, False, "no_finite_minimizer", message)
    z, grad_norm, n_iter, converged, err = _newton(obj, z0, tol=tol, max_iter=max_iter)
    if not converged:
        message = (f"{loss}: stopped after {n_iter} Newton iterations: scaled gradient {err:.3g} > tol={tol:g} "
                   f"(gradient norm {grad_norm:.3g})")
        warnings.warn(message, ConvergenceWarning, stacklevel=4)
        return _result(obj, z, grad_norm, n_iter, False, "max_iter", message)
    if non_unique.any():
        bad = np.flatnonzero(non_unique)
        message = (f"{loss}: minimiser not unique in {bad.size} context(s) (first: {bad[:5].tolist()}): the "
                   "comparison graph is disconnected, so the mass between its components is free; returned one")
        warnings.warn(message, NonUniqueMinimizerWarning, stacklevel=4)
        return _result(obj, z, grad_norm, n_iter, True, "not_unique", message)
    return _result(obj, z, grad_norm, n_iter, True, "converged",
                   f"{loss}: converged in {n_iter} Newton iterations (scaled gradient {err:.2e}, "
                   f"gradient norm {grad_norm:.2e})")


def _solve_spo_loss(problem, *, data, sampler, preference, tol, max_iter, alpha=None, beta=0.0, weights=None):
    alpha = _required("alpha", alpha, "spo")
    if weights is not None and data is not None and np.ndim(weights) == 1:
        weights = pair_weights_from_samples(data, weights)       # per-sample μ → per-pair μ̄
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _solve_spo(problem, alpha=alpha, beta=beta, data=data, sampler=sampler, preference=preference,
                            weights=weights, tol=tol, max_iter=max_iter)
    for w in caught:      # re-issued under the caller's filters, pointing at the caller's line
        warnings.warn(w.message, w.category, stacklevel=3)
    return result


def _solve_choice(problem, *, ranked, data, sampler, preference, tol, max_iter, alpha=None, beta=0.0, k=None,
                  weights=None):
    loss = "spo_ranked" if ranked else "spo_best_of_n"
    alpha = v.positive_float("alpha", _required("alpha", alpha, loss))
    beta = v.nonnegative_float("beta", beta)
    if preference is not None:
        raise ValueError(f"preference must be None for loss={loss!r}: the expert is Luce / Plackett–Luce on the rewards")
    if data is None:
        if not (isinstance(sampler, str) and sampler == "uniform"):
            raise ValueError(f"sampler must be 'uniform' for the population {loss} objective "
                             f"(shown k-sets uniform among the k-subsets), got {sampler!r}")
        events = population_events(problem, _required("k", k, loss), ranked=ranked, weights=weights)
    else:
        if (data.n_contexts, data.n_actions) != (problem.n_contexts, problem.n_actions):
            raise ValueError(f"data has (n_contexts, n_actions) = {(data.n_contexts, data.n_actions)}, "
                             f"problem has {(problem.n_contexts, problem.n_actions)}")
        if k is not None and v.positive_int("k", k, minimum=2) != data.k:
            raise ValueError(f"k={k} does not match the data, which shows k={data.k} actions per sample")
        events = data_events(data, weights)
    obj = ChoiceObjective(events, alpha=alpha, beta=beta, log_ref=problem.log_ref,
                          context_probs=problem.context_probs)
    graph = comparison_graph(events.beats())
    z0 = _log_odds_start(torch.from_numpy(events.pair_surrogate()), alpha, torch.from_numpy(~graph.unique))
    no_kl = beta == 0.0
    return _finish(obj, z0, unbounded=graph.unbounded & no_kl, non_unique=graph.non_unique & no_kl,
                   tol=tol, max_iter=max_iter, loss=loss)


def _solve_dpo(problem, *, data, sampler, preference, tol, max_iter, beta=None, weights=None):
    beta = v.positive_float("beta", _required("beta", beta, "dpo"))
    W, beats = _pair_inputs(problem, data, sampler, preference, weights)
    obj = dpo_objective(W, beta=beta, log_ref=problem.log_ref, context_probs=problem.context_probs)
    graph = comparison_graph(beats)
    # DPO's minimiser is log π_ref + (BT log-odds fit)/β: the SPO start shifted by the reference.
    z0 = obj.log_ref + _log_odds_start(obj.W, beta, torch.from_numpy(~graph.unique))
    return _finish(obj, z0, unbounded=graph.unbounded, non_unique=graph.non_unique, tol=tol,
                   max_iter=max_iter, loss="dpo")


def _solve_ipo(problem, *, data, sampler, preference, tol, max_iter, tau=None, weights=None):
    tau = v.positive_float("tau", _required("tau", tau, "ipo"))
    W, beats = _pair_inputs(problem, data, sampler, preference, weights)
    obj = ipo_objective(W, tau=tau, log_ref=problem.log_ref, context_probs=problem.context_probs)
    # A quadratic bounded below: a minimiser always exists, unique iff the (undirected) graph is connected.
    graph = comparison_graph(beats | beats.transpose(0, 2, 1))
    z0 = obj.log_ref.clone()      # Newton solves the quadratic in one step from anywhere
    return _finish(obj, z0, unbounded=np.zeros(problem.n_contexts, dtype=bool),
                   non_unique=graph.n_components > 1, tol=tol, max_iter=max_iter, loss="ipo")


def _solve_cpo(problem, *, data, sampler, preference, tol, max_iter, beta=None, lam=1.0, weights=None):
    beta = v.positive_float("beta", _required("beta", beta, "cpo"))
    lam = v.nonnegative_float("lam", lam)
    W, beats = _pair_inputs(problem, data, sampler, preference, weights)
    obj = CPOObjective(W, beta=beta, lam=lam, log_ref=problem.log_ref, context_probs=problem.context_probs)
    graph = comparison_graph(beats)
    if lam > 0:
        # −λ Σ ω_i log π_i is coercive iff every action is chosen at least once (ω_i > 0); then the
        # objective is strictly convex modulo constants (the cross-entropy Hessian M(diag π − ππᵀ)).
        has_data = beats.any(axis=(1, 2))
        unbounded = has_data & ~beats.any(axis=2).all(axis=1)
        non_unique = ~has_data
    else:
        unbounded, non_unique = graph.unbounded, graph.non_unique
    z0 = _log_odds_start(obj.W, beta, torch.from_numpy(~graph.unique))
    return _finish(obj, z0, unbounded=unbounded, non_unique=non_unique, tol=tol, max_iter=max_iter, loss="cpo")


def _solve_hinge(problem, *, data, sampler, preference, tol, max_iter, beta=None, weights=None):
    beta = v.positive_float("beta", _required("beta", beta, "hinge"))
    W, _ = _pair_inputs(problem, data, sampler, preference, weights)
    lp = solve_hinge_lp(W, beta=beta)
    obj = hinge_objective(W, beta=beta, log_ref=problem.log_ref, context_probs=problem.context_probs)
    z = torch.from_numpy(lp.g) + obj.log_ref
    mass = W.sum(axis=(1, 2))
    gap = float(np.max(lp.value - lp.dual_value))
    # The subgradient certified by the dual flow λ: ∂L/∂g_a = −β (outflow_a − inflow_a).
    subgrad = beta * float(lp.dual_violation.max())
    certified = bool(lp.ok.all()) and gap <= 1e-9 * max(1.0, float(mass.max())) and \
        bool((lp.dual_violation <= 1e-9 * np.maximum(mass, 1e-300)).all())
    detail = f"LP optimum certified by a dual flow: duality gap {gap:.2e}, subgradient norm {subgrad:.2e}"
    if not certified:
        message = f"hinge: LP not certified ({lp.message}; duality gap {gap:.3g}, dual violation " \
                  f"{float(lp.dual_violation.max()):.3g})"
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
        return _result(obj, z, subgrad, 1, False, "max_iter", message)
    non_unique = lp.width > 1e-7 / beta
    if non_unique.any():
        bad = np.flatnonzero(non_unique)
        message = (f"hinge: minimiser not unique in {bad.size} context(s) (first: {bad[:5].tolist()}): the optimal "
                   f"set is a polytope (widest log-ratio range {float(lp.width[bad].max()):.3g}); returned one "
                   f"vertex. {detail}")
        warnings.warn(message, NonUniqueMinimizerWarning, stacklevel=3)
        return _result(obj, z, subgrad, 1, True, "not_unique", message)
    return _result(obj, z, subgrad, 1, True, "converged", f"hinge: unique minimiser. {detail}")


_PAIR_DATA = (PairData,)
LOSS_SOLVERS = {
    "spo": _LossSolver(_solve_spo_loss, ("alpha", "beta", "weights"), _PAIR_DATA),
    "spo_best_of_n": _LossSolver(functools.partial(_solve_choice, ranked=False),
                                 ("alpha", "beta", "k", "weights"), (BestOfNData,)),
    "spo_ranked": _LossSolver(functools.partial(_solve_choice, ranked=True),
                              ("alpha", "beta", "k", "weights"), (RankedData,)),
    "dpo": _LossSolver(_solve_dpo, ("beta", "weights"), _PAIR_DATA),
    "ipo": _LossSolver(_solve_ipo, ("tau", "weights"), _PAIR_DATA),
    "hinge": _LossSolver(_solve_hinge, ("beta", "weights"), _PAIR_DATA),
    "cpo": _LossSolver(_solve_cpo, ("beta", "lam", "weights"), _PAIR_DATA),
}


def solve_exact(problem: TabularProblem, *, loss: str = "spo", alpha=None, beta=None, tau=None, k=None,
                lam=None, weights=None, data=None, sampler="uniform", preference=None, tol: float = 1e-12,
                max_iter: int = 100) -> SolveResult:
    """argmin over logits (m, n) of `loss`'s exact objective (SPEC §5) on the population (data=None) or on data.

    loss ∈ LOSS_SOLVERS: spo (alpha, beta = KL weight, default 0), spo_best_of_n / spo_ranked (alpha, beta =
    KL weight, k for the population), dpo and hinge (beta = loss strength), ipo (tau), cpo (beta = loss
    strength, lam = NLL weight, default 1). weights: μ per pair (m, n, n) or per sample (N,); for the
    population best-of-n / ranked, per shown k-set (m, C(n, k)) in lexicographic order. Returns a
    SolveResult; a missing / non-unique minimiser or non-convergence is reported by status and a warning.
    """
    spec = LOSS_SOLVERS.get(loss) if isinstance(loss, str) else None
    if spec is None:
        raise ValueError(f"loss must be one of {sorted(LOSS_SOLVERS)}, got {loss!r}")
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    given = {name: value for name, value in (("alpha", alpha), ("beta", beta), ("tau", tau), ("k", k),
                                             ("lam", lam), ("weights", weights)) if value is not None}
    extra = sorted(set(given) - set(spec.params))
    if extra:
        raise ValueError(f"{', '.join(extra)} not used by loss={loss!r} (it takes {', '.join(spec.params)})")
    if data is not None and not isinstance(data, spec.data_types):
        names = " or ".join(t.__name__ for t in spec.data_types)
        raise TypeError(f"data for loss={loss!r} must be a {names} or None, got {type(data).__name__}")
    tol = v.positive_float("tol", tol)
    max_iter = v.positive_int("max_iter", max_iter)
    return spec.solve(problem, data=data, sampler=sampler, preference=preference, tol=tol, max_iter=max_iter,
                      **given)


# --------------------------------------------------------------------------- RLHF (two stages)

_REWARD_FIT = {PairData: "spo", BestOfNData: "spo_best_of_n", RankedData: "spo_ranked"}


def solve_rlhf(problem: TabularProblem, *, beta: float, data=None, sampler="uniform", preference=None,
               tol: float = 1e-12, max_iter: int = 100) -> SolveResult:
    """RLHF: maximum-likelihood rewards r̂ (BT / Luce / Plackett–Luce), then π = π_ref·exp(r̂/β)/Z, (m, n).

    Population with the BT expert (preference=None): r̂ = r exactly (up to a per-context constant).
    Otherwise r̂ = θ̂, the minimiser of the α = 1, β = 0 SPO objective on the same comparisons, whose
    minimiser is softmax(θ̂) (the SPO-1 loss is the BT negative log-likelihood). The policy step is the
    closed form of max_π E_π[r̂] − β KL(π ‖ π_ref).
    """
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    beta = v.positive_float("beta", beta)
    log_ref = torch.from_numpy(problem.log_ref)
    if data is None and preference is None and isinstance(sampler, str):
        v.choice("sampler", sampler, ("uniform", "ref"))
        rewards = torch.from_numpy(problem.rewards - problem.rewards.mean(axis=1, keepdims=True))
        fit_status, fit_ok, fit_grad, fit_iter = "converged", True, 0.0, 0
        fit_message = "population BT rewards are the expert's (exact)"
    else:
        fit_loss = "spo" if data is None else _REWARD_FIT.get(type(data))
        if fit_loss is None:
            raise TypeError(f"data must be a PairData, BestOfNData, RankedData or None, got {type(data).__name__}")
        extra = {"preference": preference} if fit_loss == "spo" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # re-reported below with the RLHF context
            fit = solve_exact(problem, loss=fit_loss, alpha=1.0, beta=0.0, data=data, sampler=sampler,
                              tol=tol, max_iter=max_iter, **extra)
        rewards = torch.from_numpy(fit.logits)                      # θ̂ up to a per-context constant
        fit_status, fit_ok, fit_grad, fit_iter = fit.status, fit.converged, fit.grad_norm, fit.n_iter
        fit_message = f"reward fit ({fit_loss}, alpha=1, beta=0): {fit.message}"
    z = log_ref + rewards / beta
    logits = torch.log_softmax(z, dim=-1)
    # Value of the RLHF objective at its optimum: −Σ_x ρ_x (E_π r̂ − β KL) = −β Σ_x ρ_x log Z_x.
    log_z = torch.logsumexp(z, dim=-1)
    loss = float(-(beta * torch.tensor(problem.context_probs) * log_z).sum())
    result = SolveResult(policy=logits.exp().numpy(), logits=logits.numpy(), loss=loss, grad_norm=fit_grad,
                         n_iter=fit_iter, converged=fit_ok, message=f"rlhf: {fit_message}; policy in closed form",
                         status=fit_status)
    warning = {"no_finite_minimizer": NoFiniteMinimizerWarning, "not_unique": NonUniqueMinimizerWarning,
               "max_iter": ConvergenceWarning}.get(fit_status)
    if warning is not None:
        warnings.warn(result.message, warning, stacklevel=2)
    return result
