"""Many exact solves at once: B problems or configurations stacked on the context axis.

Contexts are independent in the SPEC §5 objective, so B problems of shapes (m_b, n) form one
problem of Σ m_b contexts whose objective is the sum of theirs: each row keeps its own pair mass
W, α, β, log π_ref and ρ_x (ρ is *not* renormalised over the stack, so every row's term
β_b ρ_x KL_x is exactly the one of its own problem). One batched damped-Newton run then solves them
all; the per-iteration Python and dispatch overhead is paid once instead of B times.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .. import _validation as v
from ..graphs import GraphReport, comparison_graph
from ..objectives import SPOObjective
from ..preferences import PairData
from ..problems import TabularProblem
from .exact import (ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning, SolveResult,
                    _log_odds_fit, _newton, _objective_inputs)


def _broadcast(name: str, value, size: int | None, is_single) -> list:
    """A list of `size` values from a single value or a sequence (size None: the sequence's own length)."""
    if is_single(value):
        return [value] * (size or 1)
    if not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a single value or a sequence of them, got {type(value).__name__}")
    values = list(value)
    if not values:
        raise ValueError(f"{name} must not be empty")
    if size is not None and len(values) != size:
        raise ValueError(f"{name} has {len(values)} entries, but the batch has {size}")
    return values


def _is_scalar(x) -> bool:
    return np.ndim(x) == 0 and not isinstance(x, (str, bytes))


def solve_exact_batched(problems, *, alpha, beta=0.0, data=None, sampler="uniform", preference=None,
                        tol: float = 1e-12, max_iter: int = 100) -> list[SolveResult]:
    """solve_exact for B configurations at once → B SolveResults; every argument is one value or B of them.

    `problems` is a TabularProblem or a sequence of them (all with the same n_actions); `alpha`,
    `beta` floats or sequences; `data` None, a PairData or a sequence of (PairData | None);
    `sampler` and `preference` one value for all (a pair-probability or preference array counts as
    one value) or a list of B. Each result holds the minimiser solve_exact finds for its own
    configuration (to the solver tolerance), with the same status and warnings, wherever
    solve_exact converges; Newton runs on the stack, contexts leaving it as they converge, and
    starts each context from the better of the log-odds fit and log π_ref (_newton_rounds), which
    also converges at large β where the log-odds start alone stalls.
    """
    lengths = {name: len(x) for name, x in (("problems", problems), ("alpha", alpha), ("beta", beta), ("data", data))
               if not (isinstance(x, (TabularProblem, PairData)) or x is None or _is_scalar(x))
               and isinstance(x, (Sequence, np.ndarray))}
    lengths.update({name: len(x) for name, x in (("sampler", sampler), ("preference", preference))
                    if isinstance(x, list)})
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the sequences given must have one length (the batch size), got {lengths}")
    B = next(iter(lengths.values())) if lengths else 1
    problems = _broadcast("problems", problems, B, lambda x: isinstance(x, TabularProblem))
    alphas = [v.positive_float("alpha", a) for a in _broadcast("alpha", alpha, B, _is_scalar)]
    betas = [v.nonnegative_float("beta", b) for b in _broadcast("beta", beta, B, _is_scalar)]
    datas = _broadcast("data", data, B, lambda x: x is None or isinstance(x, PairData))
    samplers = sampler if isinstance(sampler, list) else [sampler] * B
    preferences = preference if isinstance(preference, list) else [preference] * B
    if len(samplers) != B or len(preferences) != B:
        raise ValueError(f"sampler and preference lists must have {B} entries (the batch size)")
    tol = v.positive_float("tol", tol)
    max_iter = v.positive_int("max_iter", max_iter)
    for b, p in enumerate(problems):
        if not isinstance(p, TabularProblem):
            raise TypeError(f"problems[{b}] must be a TabularProblem, got {type(p).__name__}")
    n = problems[0].n_actions
    if any(p.n_actions != n for p in problems):
        raise ValueError(f"every problem must have the same n_actions to be stacked; got "
                         f"{sorted({p.n_actions for p in problems})}")

    # Pair mass and graph per distinct (problem, data, sampler, preference): a sweep over α or β
    # on one data set computes them once.
    inputs, keys = {}, []
    for p, d, s, pref in zip(problems, datas, samplers, preferences):
        key = (id(p), id(d), s if isinstance(s, str) else id(s), id(pref))
        if key not in inputs:
            W_k, beats_k = _objective_inputs(p, d, s, pref)
            graph_k = GraphReport.strongly_connected(p.n_contexts) if beats_k is None else comparison_graph(beats_k)
            inputs[key] = (W_k, graph_k)
        keys.append(key)
    results: list[SolveResult | None] = [None] * B
    unbounded = [betas[b] == 0.0 and bool(inputs[keys[b]][1].unbounded.any()) for b in range(B)]

    # No finite minimiser: report the log-odds start as solve_exact does. Configurations sharing a
    # pair mass are stacked (its Haldane floor is then the same as alone); the rest is per problem.
    for key in dict.fromkeys(keys[b] for b in range(B) if unbounded[b]):
        group = [b for b in range(B) if unbounded[b] and keys[b] == key]
        W_k, graph_k = inputs[key]
        p = problems[group[0]]
        obj = SPOObjective(np.concatenate([W_k] * len(group)), alpha=np.repeat([alphas[b] for b in group], p.n_contexts),
                           beta=0.0, log_ref=np.concatenate([p.log_ref] * len(group)),
                           context_probs=np.concatenate([p.context_probs] * len(group)))
        z0 = _log_odds_fit(obj.W, obj.alpha, torch.from_numpy(np.tile(~graph_k.unique, len(group))))
        values, grad = obj.values(z0), obj.grad(z0)
        bad = np.flatnonzero(graph_k.unbounded)
        message = (f"no finite minimiser: the beats graph of {bad.size} context(s) (first: {bad[:5].tolist()}) "
                   "is not strongly connected, so with beta=0 some probabilities run to 0; "
                   "use beta > 0 or more data")
        for k, b in enumerate(group):
            span = slice(k * p.n_contexts, (k + 1) * p.n_contexts)
            results[b] = _make_result(z0, values, grad, span, 0, False, "no_finite_minimizer", message)

    solve = [b for b in range(B) if not unbounded[b]]
    if solve:
        counts = [problems[b].n_contexts for b in solve]
        W = np.concatenate([inputs[keys[b]][0] for b in solve])              # (Σ m_b, n, n)
        ridge = np.concatenate([~inputs[keys[b]][1].unique for b in solve])
        log_ref = np.concatenate([problems[b].log_ref for b in solve])
        rho = np.concatenate([problems[b].context_probs for b in solve])     # not renormalised (docstring)
        ctx_alpha = np.repeat([alphas[b] for b in solve], counts)           # (Σ m_b,)
        ctx_beta = np.repeat([betas[b] for b in solve], counts)
        obj, z, n_iter, converged = _newton_rounds(W, ctx_alpha, ctx_beta, log_ref, rho, ridge,
                                                   tol=tol, max_iter=max_iter)
        g, H = obj.grad_hess(z)
        err = _scaled_gradient(obj, g, H)
        values = obj.values(z)                                              # (rows,) per-context objective
        start = 0
        for b, m_b in zip(solve, counts):
            span = slice(start, start + m_b)
            start = span.stop
            err_b = float(err[span].max())
            iters = int(n_iter[span].max())
            if not converged[span].all():
                status, ok = "max_iter", False
                message = (f"stopped after {iters} Newton iterations: scaled gradient {err_b:.3g} > tol={tol:g} "
                           f"(gradient norm {float(g[span].abs().max()):.3g})")
            elif betas[b] == 0.0 and inputs[keys[b]][1].non_unique.any():
                status, ok = "not_unique", True
                message = ("minimiser not unique: the comparison graph of some context is disconnected, so the "
                           "mass between its components is free; returned the one with equal mean logit per "
                           "component (beta > 0 selects a unique one)")
            else:
                status, ok = "converged", True
                message = f"converged in {iters} batched Newton iterations (scaled gradient {err_b:.2e})"
            results[b] = _make_result(z, values, g, span, iters, ok, status, message)

    for status, category in (("no_finite_minimizer", NoFiniteMinimizerWarning),
                             ("not_unique", NonUniqueMinimizerWarning), ("max_iter", ConvergenceWarning)):
        hit = [b for b in range(B) if results[b].status == status]
        if hit:
            warnings.warn(f"{len(hit)} of {B} batched problems (first: {hit[:5]}): {results[hit[0]].message}",
                          category, stacklevel=2)
    return results


def _make_result(z, values, grad, span, n_iter, converged, status, message) -> SolveResult:
    """The SolveResult of the rows `span` of a stacked solve: logits z, per-context values and gradient."""
    logits = torch.log_softmax(z[span], dim=-1)
    return SolveResult(policy=logits.exp().numpy(), logits=logits.numpy(), loss=float(values[span].sum()),
                       grad_norm=float(grad[span].abs().max()), n_iter=n_iter, converged=converged,
                       message=message, status=status)


def _scaled_gradient(obj, g, H) -> np.ndarray:
    """Per-context max_i |∂L/∂z_i| / ∂²L/∂z_i², _newton's stopping quantity, shape (rows,)."""
    floor = 1e-300 + 1e-30 * obj.context_mass()[:, None]
    return (g.abs() / torch.diagonal(H, dim1=1, dim2=2).abs().clamp(min=floor)).amax(dim=1).numpy()


def _newton_rounds(W, alpha, beta, log_ref, rho, ridge, *, tol, max_iter):
    """_newton on stacked contexts in rounds of doubling length; converged contexts leave the stack.

    Contexts are independent and Newton keeps no state besides z, so restarting on the remaining
    rows continues exactly; a few slow contexts then no longer make every other one pay for their
    iterations and backtracking line searches. Returns the objective on all rows, z (rows, n),
    iterations (rows,) and converged (rows,).
    """
    sub = lambda idx: SPOObjective(W[idx], alpha=alpha[idx], beta=beta[idx], log_ref=log_ref[idx],
                                   context_probs=rho[idx])
    rows_all = np.arange(W.shape[0])
    obj = sub(rows_all)
    z = _log_odds_fit(obj.W, obj.alpha, torch.from_numpy(ridge))
    # Where the KL term dominates (large β) the minimiser is near π_ref, far from the log-odds fit;
    # Newton on the non-convex KL can stall from there, so each context starts from whichever of
    # the two points has the lower objective.
    ref = obj.log_ref
    use_ref = obj.values(ref) < obj.values(z)
    z = torch.where(use_ref[:, None], ref, z)
    n_iter = np.zeros(rows_all.size, dtype=np.int64)
    converged = np.zeros(rows_all.size, dtype=bool)
    active = rows_all
    done, length = 0, 8
    while active.size and done < max_iter:
        obj_a = obj if active.size == rows_all.size else sub(active)
        z_a, _, it, ok, _ = _newton(obj_a, z[active], tol=tol, max_iter=min(length, max_iter - done))
        z[active] = z_a
        done += max(it, 1)
        n_iter[active] += it
        if ok:                                   # every active row met tol (or stalled at round-off)
            converged[active] = True
            break
        finished = _scaled_gradient(obj_a, *obj_a.grad_hess(z_a)) <= tol
        converged[active[finished]] = True
        active = active[~finished]
        length *= 2
    return obj, z, n_iter, converged
