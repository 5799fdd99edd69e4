"""Numerical checks of the paper's claims, returning reports with numbers and pass/fail (SPEC §6)."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from . import _validation as v
from .metrics import kl, max_abs_log_ratio, tv, weighted_mean
from .problems import TabularProblem, soft_optimal_policy
from .solvers.exact import solve_exact


@dataclass(frozen=True)
class Theorem1Report:
    """Distance between the exact SPO minimiser and softmax(r/α), with the verdict."""

    n_contexts: int
    n_actions: int
    alpha: float
    beta: float
    sampler: str
    max_tv: float             # max_x TV(π*, softmax(r/α))
    mean_tv: float            # Σ_x ρ_x TV
    max_log_ratio: float      # max_{x,y} |log π* − log softmax(r/α)|
    kl_to_target: float       # Σ_x ρ_x KL(π* ‖ softmax(r/α))
    grad_norm: float
    n_iter: int
    converged: bool
    tol: float
    passed: bool
    note: str

    def as_dict(self) -> dict:
        """Plain-dict form (JSON-ready)."""
        return asdict(self)


def check_theorem1(problem: TabularProblem, *, alpha: float, beta: float = 0.0, sampler="uniform",
                   tol: float = 1e-9) -> Theorem1Report:
    """Solve the population SPO objective exactly; pass iff converged and max TV to softmax(r/α) ≤ tol."""
    alpha = v.positive_float("alpha", alpha)
    beta = v.nonnegative_float("beta", beta)
    tol = v.positive_float("tol", tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # the status is reported below instead
        res = solve_exact(problem, alpha=alpha, beta=beta, sampler=sampler)
    target = soft_optimal_policy(problem.rewards, alpha)
    tvs = tv(res.policy, target)
    rho = problem.context_probs
    max_tv = float(tvs.max())
    passed = bool(res.converged and res.status == "converged" and max_tv <= tol)
    if beta > 0:
        note = "beta > 0: Theorem 1 assumes beta = 0; the minimiser moves from softmax(r/alpha) toward pi_ref"
    elif res.status != "converged":
        note = res.message
    else:
        note = "Theorem 1 holds" if passed else f"max TV {max_tv:.3g} exceeds tol {tol:g}"
    return Theorem1Report(
        n_contexts=problem.n_contexts, n_actions=problem.n_actions, alpha=alpha, beta=beta,
        sampler=sampler if isinstance(sampler, str) else "array",
        max_tv=max_tv, mean_tv=weighted_mean(tvs, rho),
        max_log_ratio=float(max_abs_log_ratio(res.policy, target).max()),
        kl_to_target=weighted_mean(kl(res.policy, target), rho),
        grad_norm=res.grad_norm, n_iter=res.n_iter, converged=res.converged, tol=tol,
        passed=passed, note=note)
