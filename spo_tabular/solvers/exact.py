"""Deterministic solver for the exact tabular objective, to machine precision (SPEC §5).

Batched damped Newton over contexts (they are independent): per iteration one pass over the pair
grid for the gradient and the Laplacian Hessian and a batched Cholesky solve (m systems of size n).
For SPO a step is accepted without objective values: the preference term is convex, so its change
along a step is bounded by its end slope, and only the cheap KL term is evaluated (per-context
Armijo backtracking on values remains the fallback). The start is the weighted log-odds
least-squares fit, which is already exact for consistent Bradley–Terry mass; Newton then converges
quadratically. The constant direction (logits are defined up to a per-context shift) is fixed by a
rank-one gauge term; an indefinite KL Hessian gets saddle-free Newton. Row blocks of contexts are
solved in parallel on a small thread pool, and derivatives are computed in reused buffers.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .. import _validation as v
from .._threads import SMALL_WORK, torch_threads
from ..choice_sets import data_events, pair_weights_from_samples, population_events
from ..graphs import GraphReport, comparison_graph, is_complete
from ..lowrank import chebyshev_half_span, chebyshev_rank, woodbury_step
from ..objectives import DTYPE, PairwiseObjective, SPOObjective, _laplacian
from ..objectives_zoo import ChoiceObjective, CPOObjective, dpo_objective, hinge_objective, ipo_objective
from ..preferences import BestOfNData, PairData, RankedData, _pair_mass, pair_mass, pair_probs, preference_matrix
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


def _log_odds_system(W: torch.Tensor, complete: bool, rewards=None, weights=None, c=None, out=None):
    """Shown mass c = W + Wᵀ (m, n, n) and b_i = Σ_j c_ij log(W_ij / W_ji) (m, n) of the log-odds fit.

    With `rewards` (population Bradley–Terry) the log-odds are r_i − r_j exactly, so
    b = deg ⊙ r − c r needs no logarithm and survives W underflowing to 0 for huge reward gaps.
    `c` may pass W + Wᵀ when the caller has it (it is returned, and consumed by _log_odds_start);
    `out` two (m, n, n) buffers to work in: a fresh grid-sized temporary costs more than the pass
    that fills it.
    """
    buf0, buf1 = (None, None) if out is None else out
    if c is None:
        c = torch.add(W, W.transpose(1, 2), out=buf0)            # shown mass of the pair, symmetric
    if rewards is not None:
        r = torch.tensor(np.asarray(rewards, dtype=np.float64))   # (m, n), a copy: rewards are read-only
        b = c.sum(dim=2) * r - _matvec(c, r, out=buf1)
        if weights is not None:     # log(μ_ij σ_ij / μ_ji σ_ji) = r_i − r_j + log μ_ij − log μ_ji
            log_mu = torch.log(torch.as_tensor(weights, dtype=DTYPE))
            log_mu.diagonal(dim1=1, dim2=2).zero_()
            b = b + (c * (log_mu - log_mu.transpose(1, 2))).sum(dim=2)
        return c, b
    if complete and bool((W > 0).sum() == W.shape[0] * W.shape[1] * (W.shape[1] - 1)):
        X = torch.log(W, out=buf1)
        X.diagonal(dim1=1, dim2=2).zero_()                  # log 0 on the diagonal, where c = 0
    else:
        # A one-way pair has an infinite log-odds; adding half the context's smallest mass to every
        # pair (Haldane's correction: half a comparison both ways) keeps it finite and shrinks the
        # noisy log-odds of rarely compared pairs. A pair never shown keeps log-odds 0 (c = 0).
        X = torch.where(W > 0, W, torch.tensor(torch.inf, dtype=W.dtype), out=buf1)   # no boolean gather
        smallest = X.amin(dim=(1, 2))                        # (m,) smallest positive mass per context
        floor = torch.where(torch.isfinite(smallest), 0.5 * smallest, 1.0)
        X = torch.add(W, floor[:, None, None], out=X).log_()
    # b_i = Σ_j c_ij (log W_ij − log W_ji) = row sums − column sums of c ⊙ log W (c is symmetric):
    # no transposed elementwise pass.
    X.mul_(c)
    return c, X.sum(dim=2) - X.sum(dim=1)


def _matvec(A: torch.Tensor, x: torch.Tensor, out=None) -> torch.Tensor:
    """A x per context, (m, n, n) · (m, n) → (m, n); with an (m, n, n) buffer `out`, as a product and
    row sums in it, about twice as fast as a batched matrix–vector product."""
    if out is None:
        return torch.bmm(A, x[..., None])[..., 0]
    return torch.mul(A, x[:, None, :], out=out).sum(dim=2)


def _log_odds_fit(W: torch.Tensor, alpha, ridge: torch.Tensor) -> torch.Tensor:
    """The log-odds start from a pair mass W (m, n, n) alone: z_i − z_j ≈ log(W_ij / W_ji) / α."""
    c, b = _log_odds_system(W, complete=False)
    return _log_odds_start(c, b, alpha, ridge)


def _log_odds_start(c: torch.Tensor, b: torch.Tensor, alpha, ridge: torch.Tensor,
                    equal_weights: bool = False) -> torch.Tensor:
    """Weighted least squares Σ c_ij (u_i − u_j − log(W_ij/W_ji))² (a graph-Laplacian system L u = b), as z = u/α.

    Exact for consistent Bradley–Terry mass. `ridge` (m,) bool marks contexts whose graph is
    disconnected: a tiny ridge there pins the directions the data leave free. `c` is consumed.
    """
    m, n, _ = c.shape
    alpha = torch.as_tensor(alpha, dtype=DTYPE).reshape(-1, 1)   # float or (m,) per context
    if equal_weights:
        # Every pair shown equally often (c_ij = c_x): the Laplacian is c_x(nI − 11ᵀ), so the
        # mean-zero solution is b / (c_x n).
        c_x = c.sum(dim=(1, 2)) / (n * (n - 1))
        return b / (c_x[:, None] * n) / alpha
    scale = c.sum(dim=(1, 2)).clamp(min=torch.finfo(DTYPE).tiny) / n          # (m,)
    system = _laplacian(c)                                   # consumes c
    system += scale[:, None, None] / n                       # gauge: fixes the mean logit
    system.diagonal(dim1=1, dim2=2).add_((1e-10 * scale * ridge)[:, None])
    u, bad = _cholesky_step_block(system, -b)
    if bool(bad.any()):   # only a badly scaled graph gets here
        return torch.linalg.lstsq(system, b[..., None]).solution[..., 0] / alpha
    return u / alpha


def _kl_quadratic_start(obj: SPOObjective, z_star: torch.Tensor, work=None) -> torch.Tensor:
    """Start for β > 0: minimise ½(z−z*)ᵀH*(z−z*) + βρ·[KL(z_m) + ∇KL(z_m)·(z−z_m) + ½(z−z_m)ᵀF_m(z−z_m)].

    H* is the preference Hessian at the β = 0 minimiser z*; the KL term is modelled around the
    midpoint z_m = ½(z* + log π_ref) with its Gauss–Newton Hessian F_m = diag(π_m) − π_m π_mᵀ (PSD).
    Exact as β → 0; as β → ∞ it lands one Newton-on-KL step from π_ref. Measured on (256, 64)
    problems it saves one or two Newton iterations over the plain β = 0 start.
    """
    if _kernel_steps(obj):
        start = _kl_quadratic_start_kernel(obj, z_star)
        if start is not None:
            return start
    _, H = obj._preference_grad_hess(z_star, out=work)
    z_mid = 0.5 * (z_star + obj.log_ref)
    p = torch.softmax(z_mid, dim=-1)
    w = obj.beta * obj.context_probs
    wp = w[:, None] * p
    g_kl = obj._kl_grad_hess(z_mid, need_hess=False)[0]
    # The right side H*z* + F_m z_m − βρ∇KL(z_m), with F_m z_m = π⊙z_m − π(π·z_m) in O(n).
    b = _matvec(H, z_star, out=None if work is None else work[0]) \
        + wp * (z_mid - (p * z_mid).sum(dim=1, keepdim=True)) - w[:, None] * g_kl
    H.baddbmm_(wp[:, :, None], p[:, None, :], alpha=-1.0)      # H* + βρ F_m, in place
    H.diagonal(dim1=1, dim2=2).add_(wp)
    return _newton_direction(-b, H)


def _kl_quadratic_start_kernel(obj: SPOObjective, z_star: torch.Tensor) -> torch.Tensor | None:
    """_kl_quadratic_start with H* from obj.kernel_hessian (uniform-shown SPO; lowrank.py): no grid pass and
    no factorisation. None where some context's span of αz* needs more than n/4 Chebyshev nodes."""
    m, n = z_star.shape
    k, fits = _kernel_nodes(obj, z_star)
    if fits is not None:
        return None
    D, Tt, A = obj.kernel_hessian(z_star, k, with_kl=False)           # H* ≈ diag(D) + T A Tᵀ
    z_mid = 0.5 * (z_star + obj.log_ref)
    p, g_kl, _ = obj._kl_parts(z_mid)
    w = obj.beta * obj.context_probs
    wp = w[:, None] * p
    # The right side H*z* + F_m z_m − βρ∇KL(z_m), as in _kl_quadratic_start.
    b = (D * z_star).add_((torch.bmm(A, torch.bmm(Tt, z_star[:, :, None])) * Tt).sum(dim=1)) \
        + wp * (z_mid - (p * z_mid).sum(dim=1, keepdim=True)) - w[:, None] * g_kl
    # H* + βρ F_m = diag(D + wp) + [T, π] diag(A, −w) [T, π]ᵀ, plus the gauge on T_0 = 1.
    Vt = torch.cat((Tt, p[:, None, :]), dim=1)
    G = torch.zeros(m, k + 1, k + 1, dtype=z_star.dtype)
    G[:, :k, :k] = A
    G[:, k, k] = -w
    D = D.add_(wp)
    G[:, 0, 0] += D.abs().mean(dim=1) / n
    d, ok = woodbury_step(-b, D, Vt, G)
    if not bool(ok.all()):
        return None
    return d - d.mean(dim=1, keepdim=True)


_POOL: ThreadPoolExecutor | None = None
_WORKER = threading.local()


def _reset_pool() -> None:
    global _POOL
    _POOL = None      # a forked child has the pool object but none of its threads


os.register_at_fork(after_in_child=_reset_pool)


def _pool(k: int) -> ThreadPoolExecutor:
    """The solver's k worker threads, each running torch at one intra-op thread (the blocks are the parallelism)."""
    global _POOL
    if _POOL is None or _POOL._max_workers < k:
        threads = torch.get_num_threads()
        barrier = threading.Barrier(k + 1)
        pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="spo_tabular", initializer=_init_worker)
        for _ in range(k):          # start all k workers now, each with its own one-thread setting
            pool.submit(barrier.wait)
        barrier.wait()
        # torch.set_num_threads in a worker also changed the default that threads started later
        # inherit; the caller's own setting is untouched. Put the default back.
        torch.set_num_threads(threads)
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = pool
    return _POOL


def _init_worker() -> None:
    _WORKER.active = True           # a worker never splits its own work again (no nested pool use)
    torch.get_num_threads()         # torch's per-thread setup first (it would reread the default later)
    torch.set_num_threads(1)


def _n_blocks(rows: int, min_rows: int = 128) -> int:
    """How many row blocks to split `rows` contexts into: one per torch thread, at least min_rows each.

    Below about 128 rows a block loses to one piece at torch's own threads (measured on 2 cores: a
    64-context solve in two blocks of 32 took 1.4–1.8× as long): the Python overhead between the
    small ops of two blocks serialises on the GIL, and the blocks' ops are too short to cover it.
    """
    if getattr(_WORKER, "active", False):
        return 1
    return min(torch.get_num_threads(), rows // min_rows)


def _by_row_blocks(fn: Callable, *tensors: torch.Tensor) -> list:
    """[fn(*block)] over row blocks of the batch, computed in parallel, one block per torch thread.

    Torch factors a batch of small matrices one after another on a single thread, so a batched
    Cholesky of (256, 64, 64) leaves the other cores idle; row blocks on a thread pool use them
    (LAPACK releases the GIL). fn must act on each row independently.
    """
    k = _n_blocks(tensors[0].shape[0])
    if k < 2:
        return [fn(*tensors)]
    blocks = list(zip(*(t.chunk(k) for t in tensors)))
    futures = [_pool(k).submit(fn, *block) for block in blocks[1:]]
    first = fn(*blocks[0])
    return [first] + [f.result() for f in futures]


def _on_workers(fn: Callable, m: int) -> list:
    """[fn(rows: slice)] over the row blocks of m contexts, in order, all on the pool's one-thread workers;
    [fn(slice(None))] in the calling thread when there is one block.

    With several blocks the calling thread only waits: a grid pass at its own (OpenMP) threads would
    leave libgomp's helper thread spinning for milliseconds afterwards, on a core the blocks need.
    """
    k = _n_blocks(m)
    if k < 2:
        return [fn(slice(None))]
    bounds = np.linspace(0, m, k + 1).astype(int).tolist()
    pool = _pool(k)
    futures = [pool.submit(fn, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return [f.result() for f in futures]


def _newton_in_blocks(obj: SPOObjective, solve: Callable):
    """solve(obj_rows, rows: slice) -> (z, ‖∇L‖∞, n_iter, converged, err, values) on row blocks of the contexts in parallel, merged.

    Contexts are independent, so each block is a whole solve of its own (start, Newton and the final
    objective values) on one worker thread at one torch thread: Python overhead, small ops and
    LAPACK all run in parallel, where torch's intra-op threads would only share the large
    elementwise passes.
    """
    parts = _on_workers(lambda r: solve(obj if r == slice(None) else obj.rows(r.start, r.stop), r), obj.n_contexts)
    if len(parts) == 1:
        return parts[0]
    return (torch.cat([p[0] for p in parts]), max(p[1] for p in parts), max(p[2] for p in parts),
            all(p[3] for p in parts), max(p[4] for p in parts), torch.cat([p[5] for p in parts]))


def _newton_direction(g: torch.Tensor, H: torch.Tensor, rebuild: Callable | None = None) -> torch.Tensor:
    """The Newton step d = −M⁻¹g (m, n) for a positive definite stand-in M of each context's H (consumed).

    M = H + gauge, with the gauge term (mean |diag H|)·11ᵀ/n removing the null direction 1 (logits
    are defined up to a constant) without changing the step, since g ⟂ 1. Where H is indefinite
    (the non-convex KL term) M is the saddle-free |H|: each eigenvalue λ replaced by |λ| (floored),
    so −M⁻¹g is still a descent direction and escapes the saddles. Factor and solve run in
    parallel row blocks. Returned normalised to mean zero per context. With `rebuild` (a (m,) bool
    mask -> those rows of H again) H is factored in place, and the rare rows that need the
    saddle-free fallback are rebuilt. H may be float32 (a cheap early iteration): the step is then
    solved in float32 and returned in g's dtype.
    """
    n = H.shape[1]
    scale = torch.diagonal(H, dim1=1, dim2=2).abs().mean(dim=1)
    if not bool(scale.all()):
        scale = torch.where(scale > 0, scale, scale.max().clamp(min=torch.finfo(H.dtype).tiny))
    system = H.add_((scale / n)[:, None, None])        # H is not needed afterwards: in place
    in_place = rebuild is not None
    blocks = _by_row_blocks(lambda A, gb: _cholesky_step_block(A, gb, in_place), system, g)
    d, bad = blocks[0] if len(blocks) == 1 else (torch.cat([d for d, _ in blocks]), torch.cat([b for _, b in blocks]))
    if bool(bad.any()):
        failed = rebuild(bad).add_(scale[bad, None, None] / n) if in_place else system[bad]
        try:
            lam, U = torch.linalg.eigh(failed)
            lam = lam.abs().clamp(min=1e-10 * scale[bad, None])
            d[bad] = -(U @ ((U.mT @ g[bad].to(U.dtype)[..., None])[..., 0] / lam)[..., None])[..., 0].to(d.dtype)
        except torch.linalg.LinAlgError:
            # Numerically singular beyond repair (e.g. probabilities that underflow): a diagonally
            # scaled gradient step; the line search keeps it a descent step.
            diag = torch.diagonal(failed, dim1=1, dim2=2).abs()
            d[bad] = (-g[bad].to(diag.dtype) / torch.maximum(diag, scale[bad, None]).clamp(
                min=torch.finfo(H.dtype).tiny)).to(d.dtype)
    return (d - d.mean(dim=1, keepdim=True)).to(g.dtype)


def _cholesky_block(A: torch.Tensor, in_place: bool = False):
    """(L, failed): lower Cholesky factors of a batch (k, n, n) and a (k,) bool of the rows that are not PD.

    numpy's batched Cholesky (the gufunc behind np.linalg.cholesky, called with `out`), not torch's:
    for small matrices torch spends about a third of its time zeroing the upper triangles (a strided
    tril), and numpy releases the GIL, so row blocks factor in parallel. A failed row's factor is
    NaN. The factors go to this thread's reused buffer, to be used before the next factorisation on
    this thread, or with `in_place` over A itself, whose failed rows are then lost: one grid buffer
    fewer for the cache (two row blocks' working sets fit the 32 MB L3 of the machines measured:
    1.09× on the β = 0.1 solve at (256, 64)).
    """
    signature = {torch.float64: "d->d", torch.float32: "f->f"}.get(A.dtype)
    if signature and A.device.type == "cpu" and _CHOLESKY_LO is not None:
        L = A if in_place else _grid_work(1, A.shape[0], A.shape[1], slot="cholesky", dtype=A.dtype)[0]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
            _CHOLESKY_LO(A.numpy(), out=L.numpy(), signature=signature)
        return L, torch.isnan(L.diagonal(dim1=1, dim2=2)).any(dim=1)
    L, info = torch.linalg.cholesky_ex(A)
    return L, info != 0


try:    # the gufunc np.linalg.cholesky calls, which takes `out`; torch's Cholesky where it is gone
    from numpy.linalg._umath_linalg import cholesky_lo as _CHOLESKY_LO
except ImportError:  # pragma: no cover
    _CHOLESKY_LO = None


def _cholesky_step_block(A: torch.Tensor, g: torch.Tensor, in_place: bool = False):
    """(−A⁻¹g (k, n), failed (k,) bool) for a block of symmetric matrices A (k, n, n); failed rows are not PD
    (with `in_place`, A is consumed)."""
    L, bad = _cholesky_block(A, in_place)
    y = torch.linalg.solve_triangular(L, g.to(L.dtype).unsqueeze(2), upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True).squeeze_(2).neg_(), bad


def _newton(obj: PairwiseObjective, z: torch.Tensor, *, tol: float, max_iter: int, polish: float = 16.0,
            start=None, work=None, lowp=None, check_start: bool = False):
    """Batched damped Newton until every context's scaled gradient max_i |∂L/∂z_i| / |∂²L/∂z_i²| ≤ tol.

    The ratio estimates the remaining error of each logit; a context keeps iterating until it is
    `polish` times below tol (one more quadratic step is cheap and buys margin) or its gradient is
    at round-off level, and counts as converged below tol. Contexts that have converged leave the
    active set (when the objective supports `.subset`), so late iterations only touch the stragglers.
    A context whose step has shrunk to round-off is stopped where it is. `start` may pass
    obj.split_derivatives(z) when the caller already has it. Returns
    (z, ‖∇L‖∞, n_iter, converged, max scaled gradient).

    `lowp`, obj's float32 twin (SPOObjective.astype), computes the derivatives and factorisations
    of the early iterations, while some context's scaled gradient exceeds _LOWP_ERR, at least a
    quarter of them still exceed _LOWP_FLOOR, and before any has converged: half the memory traffic
    and faster LAPACK where the step only needs a few digits. Every context then takes its last
    steps, and is judged converged, in float64. (Float32 steps stall near a scaled gradient of
    1e-6: without the quarter rule a few slow contexts kept the whole batch there, unable to
    converge and retire, for ten iterations.) The float32 iterations also end once one fails to
    halve the largest scaled gradient: where float32 is what limits it (large reward gaps, whose
    curvatures are tiny beside the gradient's rounding) they never reach _LOWP_ERR, and a (32, 16)
    problem with rewards ×10 stalled in them for all of max_iter. Where `lowp` takes kernel steps
    (_kernel_steps: uniform-shown SPO, large blocks) its derivatives carry the Hessian's diagonal
    only, and the step is _kernel_direction's: no Hessian grid, no n × n factorisation.
    `check_start` (a start that is likely the minimiser already) first tests it with the gradient and
    the Hessian's diagonal only (obj.grad_hess_diag), and builds the Hessian only if needed.

    Step acceptance without objective values, when the objective is a convex term P plus a cheap
    non-convex N (`obj.split_convex`: the preference term and β·KL): convexity bounds the change of
    P along a step by its end slope, L(z + d) − L(z) ≤ ∇P(z + d)·d + N(z + d) − N(z), and the
    derivatives that bound needs are the next iteration's. A context whose bound meets the Armijo
    condition takes the full step; only the others (few, early on) backtrack on objective values.
    Objectives without the split backtrack on values throughout. An objective with `max_step()` (m,)
    bounds each context's step, max_i |d_i|, before the search (SPOObjective: the saddle-free steps
    of an indefinite KL Hessian). Steps shorter than `obj.quadratic_radius()` (m,) (0.05 nats, less
    where the margin loss is sharper) are taken whole without either test.
    """
    eps, tiny = torch.finfo(z.dtype).eps, torch.finfo(z.dtype).tiny
    z = z.clone()
    m = z.shape[0]
    err_all = torch.full((m,), float("inf"), dtype=z.dtype)
    gmax_all = torch.zeros(m, dtype=z.dtype)
    stalled_all = torch.zeros(m, dtype=torch.bool)
    idx = torch.arange(m)                        # contexts of `obj` that `sub` still holds
    sub, zs = obj, z
    mass = sub.context_mass()
    floor = tiny + 1e-30 * mass[:, None]
    g_tiny = 4 * eps * mass                      # a gradient at round-off level for the context's mass
    done_err = tol / polish
    any_stalled = False
    n_iter = 0
    split = bool(getattr(obj, "split_convex", False)) and hasattr(obj, "subset")
    cap = obj.max_step() if hasattr(obj, "max_step") else None      # a bound on each step (m,)
    # Steps within this (m,) are taken whole, untested (objectives without it: 0.05 nats).
    radius = obj.quadratic_radius() if hasattr(obj, "quadratic_radius") else torch.full((m,), 0.05, dtype=z.dtype)
    if cap is not None and bool(torch.isinf(cap).all()):
        cap = None
    if split and work is None:
        work = _grid_work(2, m, z.shape[1])
    use_lowp = lowp is not None
    lowp_worst = float("inf")        # the largest scaled gradient at the last float32 iteration

    def derivatives(o, x: torch.Tensor) -> tuple:
        return _derivatives(o, x, work, lowp if use_lowp and o is obj else None)

    if check_start and start is None and hasattr(obj, "grad_hess_diag"):
        g, diag = obj.grad_hess_diag(z, out=None if work is None else _rows(work, z))
        err, gmax = _scaled_error(g, diag, floor)
        if bool(((err <= done_err) | (gmax <= g_tiny)).all()):
            finished = (err <= tol) | (gmax <= g_tiny)
            return z, float(gmax.max()), 0, bool(finished.all()), float(err.max())

    pending = start
    for it in range(max_iter + 1):
        if pending is None:
            pending = derivatives(sub, zs) if split else sub.grad_hess(zs) + (None, None)
        g, H, gn, fn = pending
        pending = None
        err, gmax = _scaled_error(g, _hessian_diagonal(H), floor)
        # Done: the scaled gradient is below tol, or the gradient itself is at round-off level
        # (where probabilities underflow the Hessian vanishes and no step can improve anything).
        # (Few small ops per iteration: two solves in parallel threads hand the GIL back and forth
        # at every op.)
        done = (err <= done_err) | (gmax <= g_tiny)
        if any_stalled:
            done |= stalled_all[idx]
        n_done = int(done.sum())
        if n_done == done.numel() or it == max_iter:
            err_all[idx], gmax_all[idx] = err, gmax
            break
        n_iter = it + 1
        if use_lowp:
            worst = float(err.max())
            use_lowp = worst > _LOWP_ERR and 4 * int((err > _LOWP_FLOOR).sum()) >= err.numel() \
                and worst < _LOWP_PROGRESS * lowp_worst
            lowp_worst = worst
        if hasattr(sub, "subset") and 4 * n_done >= done.numel():
            z[idx[done]] = zs[done]             # retire converged contexts
            err_all[idx[done]], gmax_all[idx[done]] = err[done], gmax[done]
            keep = ~done
            if split:
                # The kept rows go to reused buffers (a fresh grid-sized copy costs its page faults,
                # ~2 ms a solve at (128, 64)): H to the first work buffer, free until the next
                # derivatives, and α(W + Wᵀ) to whichever of two retirement slots the source is not in.
                k = int(keep.sum())
                H = torch.index_select(H, 0, keep.nonzero()[:, 0], out=work[0][:k]) \
                    if H.dim() == 3 and H.dtype == work[0].dtype else H[keep]
                sub = sub.subset(keep, out_grid=None if sub.S_alpha is None else _retire_grid(sub.S_alpha, k))
            else:
                H, sub = H[keep], sub.subset(keep)
            idx, zs, g = idx[keep], zs[keep], g[keep]
            floor, mass, g_tiny = floor[keep], mass[keep], g_tiny[keep]
            radius = radius[keep]
            if cap is not None:
                cap = cap[keep]
            if split:
                fn = fn[keep]
            n_done = 0
        rebuild = functools.partial(_hessian_rows, sub, zs)
        if H.dtype != zs.dtype:
            # A float32 Hessian (the early iterations): the rows that need the saddle-free step are
            # rebuilt in float32 too, so their eigendecomposition is float32 (1.5× faster).
            rebuild = functools.partial(lambda rows, f, dtype: f(rows).to(dtype), f=rebuild, dtype=H.dtype)
        if H.dim() == 2:        # the kernel iterations: H is the Hessian's diagonal (_derivatives)
            d = _kernel_direction(lowp if sub is obj and lowp is not None else sub, zs, g, rebuild)
        else:
            d = _newton_direction(g, H, rebuild=rebuild)
        if n_done:
            d[done] = 0.0
        d_max = d.abs().amax(dim=1)
        if cap is not None:
            over = d_max > cap
            if bool(over.any()):
                d.mul_(torch.where(over, cap / d_max, 1.0)[:, None])
                d_max = torch.minimum(d_max, cap)
        slope = (g * d).sum(dim=1)                                  # < 0: a descent direction
        # A step this small is deep in Newton's quadratic region: take it whole, no test. (Not a
        # fixed length: at α = 1e3 the preference term is a wall 1e-3 wide, and untested steps of
        # 0.05 crossed it back and forth, raising the objective, for all of max_iter.)
        small = d_max <= radius
        if n_done:
            small |= done
        if split:
            z_new, pending, t = _split_step(sub, zs, d, slope, fn, small, derivatives)
        else:
            t = torch.ones_like(slope) if bool(small.all()) else _backtrack(sub, zs, d, slope, ~small)
            z_new = zs + t[:, None] * d
        step = t * d_max
        if float(step.min()) <= 4 * eps * (1.0 + float(torch.linalg.vector_norm(z_new, float("inf")))):
            stalled = (step <= 4 * eps * (1.0 + z_new.abs().amax(dim=1)))
            if n_done:
                stalled &= ~done
            if bool(stalled.any()):
                stalled_all[idx[stalled]] = True
                any_stalled = True
        zs = z_new
    if zs is not z:
        z[idx] = zs
    # A stalled context is finished when its gradient is at round-off level for its mass.
    full_mass = obj.context_mass()
    finished = (err_all <= tol) | (gmax_all <= 4 * eps * full_mass) | (stalled_all & (gmax_all <= 1e3 * eps * full_mass))
    return z, float(gmax_all.max()), n_iter, bool(finished.all()), float(err_all.max())


_LOWP_ERR = 0.05    # _newton's float32 iterations run while some context's scaled gradient exceeds this
_LOWP_FLOOR = 1e-4  # ... and a quarter of them exceed this (float32 steps stall near 1e-6)
_LOWP_PROGRESS = 0.5  # ... and the last float32 step shrank it at least this much (else float32 is the limit)
_LOWP_MIN_ACTIONS = 16  # below this the grids are too small for float32 to pay
_LOWP_MAX_GRID = 1 << 24  # elements of a row block's grid above which it does not pay either


def _scaled_error(g: torch.Tensor, diag: torch.Tensor, floor: torch.Tensor) -> tuple:
    """(max_i |g_i| / max(|H_ii|, floor), max_i |g_i|) per context, each (m,): g, diag (m, n), floor (m, 1)."""
    g_abs = g.abs()
    return (g_abs / diag.abs().to(g.dtype).clamp_(min=floor)).amax(dim=1), g_abs.amax(dim=1)


def _derivatives(obj, z: torch.Tensor, work=None, lowp=None) -> tuple:
    """obj.split_derivatives(z) in the (m, n, n) buffers `work`, or with `lowp` (obj's float32 twin) in this
    thread's float32 buffers: then ∇L, ∇N and N come back in z's dtype and the Hessian in float32 — only
    its diagonal (m, n) where `lowp` takes kernel steps (_kernel_direction builds the rest)."""
    if lowp is None:
        return obj.split_derivatives(z, out=None if work is None else _rows(work, z))
    low = lowp.log_ref.dtype
    out = _grid_work(2, *z.shape, slot="lowp", dtype=low)
    if _kernel_steps(lowp):
        g, H, gn, fn = lowp.split_grad_diag(z.to(low), out=out)
    else:
        g, H, gn, fn = lowp.split_derivatives(z.to(low), out=out)
    return g.to(z.dtype), H, gn.to(z.dtype), fn.to(z.dtype)


def _hessian_diagonal(H: torch.Tensor) -> torch.Tensor:
    """diag H (m, n) of a Hessian (m, n, n), or H itself where it is already the diagonal (kernel steps)."""
    return H if H.dim() == 2 else torch.diagonal(H, dim1=1, dim2=2)


def _assign_rows(derivs: tuple, rows: torch.Tensor, new: tuple) -> None:
    """derivs[i][rows] = new[i] for (∇L, ∇²L, ∇N, N), the Hessian rows as their diagonal where derivs holds one."""
    for full, part in zip(derivs, new):
        full[rows] = (_hessian_diagonal(part) if full.dim() == 2 and part.dim() == 3 else part).to(full.dtype)


# Kernel steps (lowrank.py): Newton steps whose preference Hessian is σ′ interpolated at k Chebyshev
# nodes, for the float32 iterations of uniform-shown SPO objectives, where a step needs a few digits.
_KERNEL_STEPS = True
_KERNEL_TOL = 1e-2            # the interpolation error allowed, relative to σ′(0)
_KERNEL_MIN_WORK = 1 << 24    # m n³ of a row block below which dense steps are faster (measured: (64, 64) and up)


def _kernel_steps(obj) -> bool:
    """Whether obj's Newton steps are kernel steps: an SPO objective with every pair shown equally, and a
    block large enough that its ~100 small ops cost less than the n³ factorisations they replace."""
    return _KERNEL_STEPS and isinstance(obj, SPOObjective) and obj.S_alpha is None \
        and obj.n_contexts * obj.n_actions ** 3 >= _KERNEL_MIN_WORK


def _kernel_nodes(obj: SPOObjective, z: torch.Tensor) -> tuple:
    """(k, fits): the Chebyshev nodes the widest span of αz (m, n) needs for _KERNEL_TOL among the contexts
    that need at most n/4, and None where every context does, else the (m,) mask of those (k = 0: none)."""
    x = obj.alpha[:, None] * z
    half = (x.amax(dim=1) - x.amin(dim=1)).mul_(0.5)
    k_max = z.shape[1] // 4
    k = chebyshev_rank(float(half.max()), _KERNEL_TOL)
    if k <= k_max:
        return k, None
    fits = half <= chebyshev_half_span(k_max, _KERNEL_TOL)
    return (chebyshev_rank(float(half[fits].max()), _KERNEL_TOL) if bool(fits.any()) else 0), fits


def _kernel_direction(obj: SPOObjective, z: torch.Tensor, g: torch.Tensor, rebuild: Callable) -> torch.Tensor:
    """The Newton step −M⁻¹g (m, n) with M = obj.kernel_hessian(z, k) + gauge, by Woodbury (lowrank.py).

    k is the number of Chebyshev nodes the widest span of αz needs for _KERNEL_TOL, at most n/4;
    contexts wider than n/4 nodes cover, and any whose solve is not finite or whose step is not a
    descent direction (M indefinite), take the dense step of their Hessian rows, rebuild(rows).
    Returned normalised to mean zero per context, in g's dtype.
    """
    low = obj.log_ref.dtype
    zk, gk = z.to(low), g.to(low)
    n = z.shape[1]
    k, fits = _kernel_nodes(obj, zk)
    d = torch.zeros_like(gk)
    if k:
        D, Vt, G = obj.kernel_hessian(zk, k)
        G[:, 0, 0] += D.abs().mean(dim=1) / n          # the gauge (1/n)·scale·11ᵀ, as T_0 = 1
        d, ok = woodbury_step(gk, D, Vt, G)
        ok &= (gk * d).sum(dim=1) < 0
        fits = ok if fits is None else fits & ok
    if fits is not None and not bool(fits.all()):
        bad = ~fits
        d[bad] = _newton_direction(gk[bad], rebuild(bad).to(low))
    return (d - d.mean(dim=1, keepdim=True)).to(g.dtype)


def _hessian_rows(obj, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """∇²L at z (m, n) for the contexts `rows` (m,) bool, freshly computed (k, n, n)."""
    if hasattr(obj, "subset"):
        return obj.subset(rows).grad_hess(z[rows])[1]
    return obj.grad_hess(z)[1][rows]


_WORK = threading.local()
_WORK_CACHE_BYTES = 64 * 2**20


def _split_step(obj, z, d, slope, fn, small, derivatives):
    """z + t·d with t = 1 where the convexity bound meets Armijo (or `small`), else backtracked: (z', derivatives at z', t).

    fn (m,) is the non-convex part N(z); derivatives(obj, z) is _newton's (_derivatives in its buffers).
    """
    z_new = z + d
    derivs = derivatives(obj, z_new)
    g_new, _, gn_new, fn_new = derivs
    bound = ((g_new - gn_new) * d).sum(dim=1) + fn_new - fn
    redo = ~((bound <= 1e-4 * slope) | small)
    t = torch.ones_like(slope)
    if bool(redo.any()):
        part = obj.subset(redo)
        t_redo = _backtrack(part, z[redo], d[redo], slope[redo])
        t[redo] = t_redo
        # Only the contexts the search moved back need new derivatives (often none: the bound is
        # conservative, and the full step meets Armijo on the values).
        moved = t_redo < 1
        if bool(moved.any()):
            rows = redo.nonzero()[:, 0][moved]
            z_new[rows] = z[rows] + t_redo[moved, None] * d[rows]
            _assign_rows(derivs, rows, part.subset(moved).split_derivatives(z_new[rows]))
    return z_new, derivs, t


def _grid_work(k: int, m: int, n: int, slot: str = "work", dtype: torch.dtype = DTYPE) -> tuple:
    """k buffers of shape (m, n, n) and `dtype`, reused from call to call: the solver's derivatives ("work";
    "lowp" in float32), the objective's W and α(W + Wᵀ) ("objective"), Cholesky factors ("cholesky"),
    retired contexts' rows ("retire0", "retire1").

    Grid-sized temporaries are the solver's hidden cost: every fresh one is first touched a page at a
    time (on this project's VMs about 1–2 µs per 4 KiB page, some 2–4 ms per (256, 64, 64) grid), and
    whether glibc hands a freed block back to the system or keeps it depends on the process's
    allocation history, so the same solve ran 1.5–2× slower in some processes than in others. One
    block per slot and thread is kept (up to 64 MiB, so (256, 64) problems and smaller); bigger ones
    are allocated per call, where the passes outweigh the faults.
    """
    size = m * n * n
    need = -(-k * size * torch.finfo(dtype).bits // 64)           # float64 words (any float dtype)
    cache = _WORK.__dict__.setdefault("slots", {})
    buf = cache.get(slot)
    if buf is None or buf.numel() < need:
        buf = torch.empty(need, dtype=DTYPE)
        if need * 8 <= _WORK_CACHE_BYTES:
            cache[slot] = buf
    flat = buf[:need].view(dtype)
    return tuple(flat[i * size:(i + 1) * size].view(m, n, n) for i in range(k))


def _retire_grid(source: torch.Tensor, k: int) -> torch.Tensor:
    """A (k, n, n) buffer for the kept rows of `source` (m, n, n) when _newton retires contexts: one of this
    thread's two retirement slots, the one `source` does not live in (retirements chain)."""
    n = source.shape[1]
    for slot in ("retire0", "retire1"):
        buf = _grid_work(1, k, n, slot=slot)[0]
        if buf.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
            return buf
    raise AssertionError("unreachable: two slots cannot both hold the source")  # pragma: no cover


@contextlib.contextmanager
def _objective_grids(m: int, n: int):
    """Two (m, n, n) buffers for one solve's W and α(W + Wᵀ): this thread's cached pair, or (None, None)
    (fresh arrays) while an outer solve on this thread holds them."""
    if getattr(_WORK, "objective_busy", False):
        yield None, None
        return
    _WORK.objective_busy = True
    try:
        yield _grid_work(2, m, n, slot="objective")
    finally:
        _WORK.objective_busy = False


def _rows(work, z: torch.Tensor):
    """The leading rows of the work buffers, one per context of z."""
    return tuple(w[:z.shape[0]] for w in work)


def _backtrack(obj, z: torch.Tensor, d: torch.Tensor, slope: torch.Tensor, search=None) -> torch.Tensor:
    """Per-context Armijo backtracking on objective values: step lengths t (m,) along d from z.

    Contexts outside `search` (m,) bool keep t = 1. After 60 halvings without a decrease a context
    stays where it is (t = 0: stalled).
    """
    f0 = obj.values(z)
    slack = 1e-13 * (f0.abs() + torch.finfo(z.dtype).tiny)     # round-off allowance near the optimum
    t = torch.ones_like(f0)
    ok = torch.zeros_like(f0, dtype=torch.bool) if search is None else ~search
    for _ in range(60):
        f_new = obj.values(z + t[:, None] * d)
        ok = ok | (f_new <= f0 + 1e-4 * t * slope + slack)
        if bool(ok.all()):
            return t
        t = torch.where(ok, t, 0.5 * t)
    return torch.where(ok, t, torch.zeros_like(t))


def _objective_inputs(problem, data, sampler, preference, out=None, map_rows=None):
    """Pair mass W (m, n, n) and the beats support (m, n, n) bool for the existence check (None: complete).

    `out`, an (m, n, n) float64 tensor, receives the population W (a reused buffer); with `map_rows`
    (as in SPOObjective) it is computed over row blocks.
    """
    if data is None:
        if out is None or map_rows is None:
            W = _pair_mass(problem, sampler, preference, out=None if out is None else out.numpy())
        else:
            W = out.numpy()
            map_rows(lambda r: _pair_mass(problem, sampler, preference, out=W[r], rows=r), problem.n_contexts)
        if isinstance(sampler, str) and preference is None:
            # "uniform" and "ref" show every pair and Bradley–Terry gives P ∈ (0, 1) exactly (even
            # where exp underflows): every pair is compared both ways.
            return W, None
        q = pair_probs(problem, sampler)
        shown = (q + q.transpose(0, 2, 1)) > 0
        return W, shown if preference is None else shown & (preference_matrix(problem, preference) > 0)
    if not isinstance(data, PairData):
        raise TypeError(f"data must be a PairData or None, got {type(data).__name__}")
    if (data.n_contexts, data.n_actions) != (problem.n_contexts, problem.n_actions):
        raise ValueError(f"data has (n_contexts, n_actions) = {(data.n_contexts, data.n_actions)}, "
                         f"problem has {(problem.n_contexts, problem.n_actions)}")
    W = data.pair_mass()
    return W, W > 0


def _result(obj, z, grad_norm, n_iter, converged, status, message, values=None) -> SolveResult:
    """The SolveResult at z; `values` (m,) are the per-context objective values there when the caller has them."""
    # Small work at one thread: a parallel region here would leave libgomp's helper thread spinning
    # for milliseconds on a core that the next solve's row blocks need (measured: 7 ms of CPU per
    # (256, 64) solve, the β = 0.1 solve 36 → 30 ms without it).
    with torch_threads(1 if z.numel() < SMALL_WORK else None):
        logits = torch.log_softmax(z, dim=-1)
        policy = logits.exp()
    if values is None and isinstance(obj, SPOObjective):
        values = obj.values(z, out=_grid_work(2, *z.shape))    # in the cached buffers, no fresh grid
    loss = obj.value(z) if values is None else float(values.sum())
    return SolveResult(policy=policy.numpy(), logits=logits.numpy(), loss=loss,
                       grad_norm=grad_norm, n_iter=n_iter, converged=converged, message=message,
                       status=status)


def _solve_spo(problem: TabularProblem, *, alpha: float, beta: float = 0.0, data: PairData | None = None,
               sampler="uniform", preference=None, weights=None, tol: float = 1e-12,
               max_iter: int = 100, warn: bool = True) -> SolveResult:
    """argmin_z −(1/α) Σ W μ log σ(α(z_i − z_j)) + β Σ_x ρ_x KL(π_z‖π_ref): population (data=None) or empirical W."""
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    alpha = v.positive_float("alpha", alpha)
    beta = v.nonnegative_float("beta", beta)
    tol = v.positive_float("tol", tol)
    max_iter = v.positive_int("max_iter", max_iter)
    m, n = problem.n_contexts, problem.n_actions
    mu = None
    if weights is not None:
        mu = v.float_array("weights", weights, shape=(m, n, n))
        if np.any(mu < 0):
            raise ValueError("weights must be non-negative")
    population_bt = data is None and preference is None
    # μ > 0 off the diagonal keeps every log-odds finite: the start stays exact for the BT expert.
    positive_mu = mu is None or bool(np.all(mu[:, ~np.eye(n, dtype=bool)] > 0))
    # Where the start is exact (β = 0, Bradley–Terry mass) one pass at torch's own threads confirms
    # it. Otherwise everything grid-sized, W and α(W + Wᵀ) too, runs in the row blocks on the
    # workers: a grid pass in this thread would leave libgomp's helper spinning on a core they need.
    exact_start = beta == 0.0 and population_bt and positive_mu
    map_rows = None if exact_start else _on_workers
    # W and α(W + Wᵀ) go to this thread's reused buffers; nothing that holds them outlives the call.
    with _objective_grids(m, n) as (w_buf, s_buf):
        W, beats = _objective_inputs(problem, data, sampler, preference, out=w_buf, map_rows=map_rows)
        if mu is not None:
            W = W * mu
            beats = (mu > 0) if beats is None else beats & (mu > 0)
        # The uniform sampler's population mass shows every pair equally (P + Pᵀ = 1 for every
        # preference model): W + Wᵀ is one number per context, and no grid of it is built.
        uniform_shown = data is None and mu is None and isinstance(sampler, str) and sampler == "uniform"
        obj = SPOObjective(W, alpha=alpha, beta=beta, log_ref=problem.log_ref,
                           context_probs=problem.context_probs, out=s_buf, map_rows=map_rows,
                           uniform_shown=uniform_shown)
        complete = beats is None or is_complete(beats)
        graph = GraphReport.strongly_connected(m) if complete else comparison_graph(beats)
        equal_weights = population_bt and mu is None and isinstance(sampler, str) and sampler == "uniform"
        rewards = problem.rewards if population_bt and positive_mu else None
        ridge = torch.from_numpy(~graph.unique)

        def start(o: SPOObjective, rows: slice, work=None) -> torch.Tensor:
            if equal_weights and rewards is not None:
                # Every pair shown equally, Bradley–Terry: the log-odds fit is (r − mean r)/α exactly.
                r = torch.tensor(np.asarray(rewards[rows], dtype=np.float64))
                return (r - r.mean(dim=1, keepdim=True)) / alpha
            c = None if work is None else work[0]
            if o.S_alpha is None:       # uniform_shown: c_x off the diagonal
                c = (o.shown_alpha / alpha)[:, None, None].expand_as(o.W).clone() if c is None else \
                    c.copy_((o.shown_alpha / alpha)[:, None, None].expand_as(c))
                c.diagonal(dim1=1, dim2=2).zero_()
            else:
                c = torch.div(o.S_alpha, alpha, out=c)
            c, b = _log_odds_system(o.W, complete, None if rewards is None else rewards[rows],
                                    weights=None if mu is None else mu[rows], out=work, c=c)
            return _log_odds_start(c, b, alpha, ridge[rows], equal_weights=equal_weights)

        def solve(o: SPOObjective, rows: slice):
            work, first, lowp = _grid_work(2, o.n_contexts, o.n_actions), None, None
            z = start(o, rows, work)
            if beta > 0:
                # The start and the early iterations in float32 where the grids are large enough
                # for it to matter and small enough to stay near the caches (_newton's `lowp`):
                # (256, 128) 0.45 → 0.20 s, (256, 256) 2.3 → 1.75 s, but (1024, 256) 9.8 → 10.5 s
                # and 0.8 GB more.
                if n >= _LOWP_MIN_ACTIONS and o.n_contexts * n * n <= _LOWP_MAX_GRID:
                    lowp = o.astype(torch.float32)
                    z_q = _kl_quadratic_start(lowp, z.float(), _grid_work(2, *z.shape, slot="lowp", dtype=torch.float32))
                else:
                    z_q = _kl_quadratic_start(o, z, work)
                z, first = _better_start(o, z_q.to(z.dtype), o.log_ref, work, lowp)
            z, *report = _newton(o, z, tol=tol, max_iter=max_iter, start=first, work=work, lowp=lowp,
                                 check_start=exact_start)
            return (z, *report, o.values(z, out=work))      # with the per-context loss, computed here in parallel

        # With β > 0 the KL term makes every context bounded and strictly determined.
        no_kl = np.full(m, beta == 0.0)
        return _finish(obj, lambda: start(obj, slice(None)), unbounded=graph.unbounded & no_kl,
                       non_unique=graph.non_unique & no_kl, tol=tol, max_iter=max_iter, loss="spo",
                       solve=lambda: solve(obj, slice(None)) if exact_start else _newton_in_blocks(obj, solve),
                       warn=warn)


def _better_start(obj: SPOObjective, z0: torch.Tensor, z1: torch.Tensor, work=None, lowp=None):
    """Per context, whichever of z0 and z1 (m, n) has the lower objective, with obj.split_derivatives there.

    Where the KL term dominates, log π_ref can be a better start than the preference fit (the KL is
    not convex in z; a bad start can stall). Convexity of the preference term P decides most contexts
    without objective values: L(z0) − L(z1) ≤ ∇P(z0)·(z0 − z1) + N(z0) − N(z1) ≤ 0 keeps z0; only the
    undecided contexts are evaluated. Returns (z, derivatives at z) for the first Newton iteration,
    through `lowp` (_derivatives) when given.
    """
    z0, z1 = z0.clone(), z1.expand_as(z0)
    derivs = _derivatives(obj, z0, work, lowp)
    g, _, gn, fn = derivs
    bound = ((g - gn) * (z0 - z1)).sum(dim=1) + fn - obj.nonconvex_values(z1)
    unsure = bound > 0
    if bool(unsure.any()):
        part = obj.subset(unsure)
        rows = unsure.nonzero()[:, 0]
        swap = part.values(z1[rows]) < part.values(z0[rows])
        if bool(swap.any()):
            rows = rows[swap]
            z0[rows] = z1[rows]
            _assign_rows(derivs, rows, part.subset(swap).split_derivatives(z0[rows]))
    return z0, derivs


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
    if beats is None:     # every ordered pair compared both ways
        beats = np.broadcast_to(~np.eye(problem.n_actions, dtype=bool), W.shape)
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


def _finish(obj, z0, *, unbounded, non_unique, tol, max_iter, loss, solve=None, warn: bool = True) -> SolveResult:
    """Newton from z0 (a tensor, or a callable making it) or `solve()`, with the SPO path's reporting: no
    finite minimiser / not converged / not unique (a warning each unless `warn` is False: the status
    and message say the same).

    `solve()` returns _newton's tuple, optionally followed by the per-context objective values at z.
    """
    if unbounded.any():
        z0 = z0() if callable(z0) else z0
        bad = np.flatnonzero(unbounded)
        message = (f"{loss}: no finite minimiser in {bad.size} context(s) (first: {bad[:5].tolist()}): "
                   "some probabilities run to 0 (the beats graph is not strongly connected); "
                   "add data or a KL term")
        if warn:
            warnings.warn(message, NoFiniteMinimizerWarning, stacklevel=4)
        return _result(obj, z0, float(obj.grad(z0).abs().max()), 0, False, "no_finite_minimizer", message)
    if solve is None:
        out = _newton(obj, z0() if callable(z0) else z0, tol=tol, max_iter=max_iter)
    else:
        out = solve()
    z, grad_norm, n_iter, converged, err = out[:5]
    values = out[5] if len(out) > 5 else None
    if not converged:
        message = (f"{loss}: stopped after {n_iter} Newton iterations: scaled gradient {err:.3g} > tol={tol:g} "
                   f"(gradient norm {grad_norm:.3g})")
        if warn:
            warnings.warn(message, ConvergenceWarning, stacklevel=4)
        return _result(obj, z, grad_norm, n_iter, False, "max_iter", message, values)
    if non_unique.any():
        bad = np.flatnonzero(non_unique)
        message = (f"{loss}: minimiser not unique in {bad.size} context(s) (first: {bad[:5].tolist()}): the "
                   "comparison graph is disconnected, so the mass between its components is free; returned one")
        if warn:
            warnings.warn(message, NonUniqueMinimizerWarning, stacklevel=4)
        return _result(obj, z, grad_norm, n_iter, True, "not_unique", message, values)
    return _result(obj, z, grad_norm, n_iter, True, "converged",
                   f"{loss}: converged in {n_iter} Newton iterations (scaled gradient {err:.2e}, "
                   f"gradient norm {grad_norm:.2e})", values)


def _solve_spo_loss(problem, *, data, sampler, preference, tol, max_iter, alpha=None, beta=0.0, weights=None,
                    executor=None):
    alpha = _required("alpha", alpha, "spo")
    if weights is not None and data is not None and np.ndim(weights) == 1:
        weights = pair_weights_from_samples(data, weights)       # per-sample μ → per-pair μ̄
    if executor is not None:
        if not isinstance(executor, cf.Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
        if data is not None:
            raise ValueError("executor applies to population solves (data=None): sampled data are solved in this process")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        beta = v.nonnegative_float("beta", beta)
        if executor is not None and beta > 0 and problem.n_contexts >= 2 * _EXECUTOR_MIN_ROWS:
            result = _solve_spo_split(problem, executor, alpha=v.positive_float("alpha", alpha), beta=beta,
                                      sampler=sampler, preference=preference, weights=weights, tol=tol,
                                      max_iter=max_iter)
        else:
            result = _solve_spo(problem, alpha=alpha, beta=beta, data=data, sampler=sampler, preference=preference,
                                weights=weights, tol=tol, max_iter=max_iter)
    for w in caught:      # re-issued under the caller's filters, pointing at the caller's line
        warnings.warn(w.message, w.category, stacklevel=3)
    return result


_EXECUTOR_MIN_ROWS = 128    # contexts in a row block that solve_exact sends to an executor


def _solve_spo_rows(problem: TabularProblem, **options) -> SolveResult:
    """The population SPO solve of one row sub-problem at one torch thread, without warnings (the merged
    result reports): an executor's task, at module level so that it pickles. (Not warnings.catch_warnings:
    its filters are the process's, and blocks on threads would undo each other's.)"""
    with torch_threads(1):
        return _solve_spo(problem, warn=False, **options)


def _solve_spo_split(problem: TabularProblem, executor: cf.Executor, *, sampler, preference, weights,
                     **options) -> SolveResult:
    """The population SPO solve (β > 0) as k independent row sub-problems, k − 1 of them on `executor`.

    Contexts are independent, so rows a..b with context mass s = Σ ρ_x form a problem of their own
    (ρ/s its context distribution; its loss and gradient are those rows' shares divided by s). The
    calling thread solves the first block while the executor solves the others; each block is a
    whole solve at one torch thread. k = min(m // 128, torch's thread count, at least 2). In worker
    processes (a ProcessPoolExecutor) the blocks run free of this interpreter's GIL, which holds two
    threads of small torch calls to about 1.3× on 2 cores (docs/performance.md, the ninth round).
    """
    m, n = problem.n_contexts, problem.n_actions
    arrays = {}
    for name, value in (("sampler", sampler), ("preference", preference), ("weights", weights)):
        if value is not None and not isinstance(value, str):        # per-context arrays: split by row
            arrays[name] = v.float_array(name, value, shape=(m, n, n))
    k = max(2, min(m // _EXECUTOR_MIN_ROWS, torch.get_num_threads()))
    bounds = np.linspace(0, m, k + 1).astype(int).tolist()
    blocks, masses = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        rho = problem.context_probs[a:b]
        masses.append(float(rho.sum()))
        sub = TabularProblem(rewards=problem.rewards[a:b], ref_policy=problem.ref_policy[a:b],
                             context_probs=rho / masses[-1])
        given = {"sampler": sampler, "preference": preference, "weights": weights}
        given.update({name: value[a:b] for name, value in arrays.items()})
        blocks.append((sub, {**options, **given}))
    futures = [executor.submit(_solve_spo_rows, sub, **kw) for sub, kw in blocks[1:]]
    try:
        results = [_solve_spo_rows(blocks[0][0], **blocks[0][1])] + [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    n_iter = max(r.n_iter for r in results)
    grad_norm = max(s * r.grad_norm for s, r in zip(masses, results))
    where = f"{k} row blocks, {k - 1} on {type(executor).__name__}"
    failed = [i for i, r in enumerate(results) if not r.converged]
    if failed:
        first = results[failed[0]]
        status = first.status
        message = (f"spo: not converged in {len(failed)} of {k} row blocks ({where}); the first, contexts "
                   f"{bounds[failed[0]]}..{bounds[failed[0] + 1] - 1}: {first.message}")
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    else:
        status = "converged"
        message = f"spo: converged in {n_iter} Newton iterations ({where}; gradient norm {grad_norm:.2e})"
    return SolveResult(policy=np.concatenate([r.policy for r in results]),
                       logits=np.concatenate([r.logits for r in results]),
                       loss=float(sum(s * r.loss for s, r in zip(masses, results))), grad_norm=grad_norm,
                       n_iter=n_iter, converged=not failed, message=message, status=status)


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
                             f"(shown k-sets uniform among the k-subsets), got {v.describe(sampler)}")
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
    if data is None and weights is None:
        # Population Luce / Plackett–Luce: the β = 0 minimiser is softmax(r/α) (SPEC §6), so start
        # there; the Luce masses e^{r_i}/Σ e^{r_k} may underflow, the rewards never do.
        z0 = torch.tensor(problem.rewards / alpha)
    else:
        z0 = _log_odds_fit(torch.from_numpy(events.pair_surrogate()), alpha, torch.from_numpy(~graph.unique))
    no_kl = beta == 0.0
    return _finish(obj, z0, unbounded=graph.unbounded & no_kl, non_unique=graph.non_unique & no_kl,
                   tol=tol, max_iter=max_iter, loss=loss)


def _solve_dpo(problem, *, data, sampler, preference, tol, max_iter, beta=None, weights=None):
    beta = v.positive_float("beta", _required("beta", beta, "dpo"))
    W, beats = _pair_inputs(problem, data, sampler, preference, weights)
    obj = dpo_objective(W, beta=beta, log_ref=problem.log_ref, context_probs=problem.context_probs)
    graph = comparison_graph(beats)
    # DPO's minimiser is log π_ref + (BT log-odds fit)/β: the SPO start shifted by the reference.
    # For the population Bradley–Terry expert the log-odds are r_i − r_j exactly (no underflow).
    population_bt = data is None and preference is None and weights is None
    c, b = _log_odds_system(obj.W, complete=False, rewards=problem.rewards if population_bt else None)
    z0 = obj.log_ref + _log_odds_start(c, b, beta, torch.from_numpy(~graph.unique))
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
    z0 = _log_odds_fit(obj.W, beta, torch.from_numpy(~graph.unique))
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


def _check_population_options(data, sampler, preference):
    """sampler and preference describe the population; with data they would be ignored, so refuse them."""
    if data is None:
        return
    if not (isinstance(sampler, str) and sampler == "uniform"):
        raise ValueError(f"sampler must be left at its default 'uniform' when data is given (the data already fix "
                         f"which pairs were shown), got {v.describe(sampler)}")
    if preference is not None:
        raise ValueError("preference must be None when data is given (the data already hold the expert's labels)")


def solve_exact(problem: TabularProblem, *, loss: str = "spo", alpha=None, beta=None, tau=None, k=None,
                lam=None, weights=None, data=None, sampler="uniform", preference=None, tol: float = 1e-12,
                max_iter: int = 100, executor=None) -> SolveResult:
    """argmin over logits (m, n) of `loss`'s exact objective (SPEC §5) on the population (data=None) or on data.

    loss ∈ LOSS_SOLVERS: spo (alpha, beta = KL weight, default 0), spo_best_of_n / spo_ranked (alpha, beta =
    KL weight, k for the population), dpo and hinge (beta = loss strength), ipo (tau), cpo (beta = loss
    strength, lam = NLL weight, default 1). weights: μ per pair (m, n, n) or per sample (N,); for the
    population best-of-n / ranked, per shown k-set (m, C(n, k)) in lexicographic order. executor (spo,
    population): a concurrent.futures.Executor, e.g. a ProcessPoolExecutor, that solves row blocks of
    a β > 0 problem with at least 256 contexts as sub-problems beside the calling thread (otherwise
    unused). Returns a SolveResult; a missing / non-unique minimiser or non-convergence is reported by
    status and a warning.
    """
    spec = LOSS_SOLVERS.get(loss) if isinstance(loss, str) else None
    if spec is None:
        raise ValueError(f"loss must be one of {sorted(LOSS_SOLVERS)}, got {v.describe(loss)}")
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    given = {name: value for name, value in (("alpha", alpha), ("beta", beta), ("tau", tau), ("k", k),
                                             ("lam", lam), ("weights", weights)) if value is not None}
    extra = sorted(set(given) - set(spec.params))
    if extra:
        raise ValueError(f"{', '.join(extra)} not used by loss={loss!r} (it takes {', '.join(spec.params)})")
    if executor is not None:
        if loss != "spo":
            raise ValueError(f"executor not used by loss={loss!r} (it applies to loss='spo')")
        given["executor"] = executor
    if data is not None and not isinstance(data, spec.data_types):
        names = " or ".join(t.__name__ for t in spec.data_types)
        raise TypeError(f"data for loss={loss!r} must be a {names} or None, got {type(data).__name__}")
    _check_population_options(data, sampler, preference)
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
    _check_population_options(data, sampler, preference)
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
