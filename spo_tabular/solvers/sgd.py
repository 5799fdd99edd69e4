"""Gradient solver for the empirical preference objectives on a logits table, in torch.

Minimises  (1/N) Σ_k μ_k ℓ(logp[x_k, chosen_k], logp[x_k, rejected_k])  +  β Σ_x ρ_x KL(π_z(·|x) ‖ π_ref(·|x))
over logits z (n_contexts, n_actions), with ℓ one of the per-sample losses of `spo_tabular.losses`
(the very functions the transformer mode trains with) and the KL computed exactly on the whole
table (SPEC §5: global, over every action). Two modes, and they are different algorithms:

- `batch_size=None` (default), full batch: the empirical objective depends on the data only
  through the count of each distinct (ctx, chosen, rejected), so every step evaluates ℓ once per
  distinct triple with weight count/N. The gradient is exact: this is deterministic gradient
  descent (Adam steps with a decaying learning rate), not stochastic. It is the fast way to the
  empirical minimiser: a step costs O(distinct triples) ≤ O(min(N, m·n²)).
- `batch_size=B`: true minibatch SGD on B pairs per step, an unbiased estimate of the same
  objective's gradient: consecutive slices of a fresh random permutation of the N pairs each
  epoch (`shuffle=True`, lower variance), or B pairs drawn uniformly with replacement.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import _validation as v
from .._progress import progress
from .._threads import SMALL_WORK, torch_threads
from ..graphs import comparison_graph
from ..losses import LOSSES
from ..preferences import PairData
from ..problems import TabularProblem
from .exact import ConvergenceWarning, NoFiniteMinimizerWarning, SolveResult

HISTORY_COLUMNS = ("step", "loss", "tv_to_target", "entropy", "kl_to_ref")
DENSE_FILL = 0.5     # full batch goes dense when distinct triples fill this share of the m·n·n table


@dataclass(frozen=True)
class PairLossSpec:
    """How solve_sgd calls a pairwise loss of LOSSES."""

    uses_ref: bool        # takes log π_ref(chosen), log π_ref(rejected) (the DPO family, SPEC §4)
    params: tuple         # its hyperparameters, by SPEC name
    beta_is_kl: bool      # `beta` weights the explicit global KL term (SPO), not the loss itself
    logistic: bool        # −log σ of a margin: no finite minimiser unless the beats graph is strongly connected


PAIR_LOSSES = {
    "spo": PairLossSpec(uses_ref=False, params=("alpha",), beta_is_kl=True, logistic=True),
    "dpo": PairLossSpec(uses_ref=True, params=("beta",), beta_is_kl=False, logistic=True),
    "ipo": PairLossSpec(uses_ref=True, params=("tau",), beta_is_kl=False, logistic=False),
    "hinge": PairLossSpec(uses_ref=True, params=("beta",), beta_is_kl=False, logistic=False),
    "cpo": PairLossSpec(uses_ref=False, params=("beta", "lam"), beta_is_kl=False, logistic=False),
}

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}

# Learning-rate factor at step t of T, decaying from 1 to `final` (a ratio).
SCHEDULES = {
    "constant": lambda t, T, final: 1.0,
    "exponential": lambda t, T, final: final ** (t / max(T - 1, 1)),
    "cosine": lambda t, T, final: final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t / max(T - 1, 1))),
}


def make_pair_loss(loss: str = "spo", *, alpha: float = 1.0, beta: float = 0.0, tau: float = 1.0,
                   lam: float = 1.0):
    """(f, kl_weight): f(logp_chosen, logp_rejected, ref_chosen, ref_rejected, weights) -> per-pair loss (N,).

    `beta` is SPO's global KL weight (returned as kl_weight) and the loss's own β for dpo, hinge
    and cpo (whose regularisation is implicit, so kl_weight = 0); `tau` is IPO's, `lam` CPO's.
    """
    v.choice("loss", loss, PAIR_LOSSES)
    spec = PAIR_LOSSES[loss]
    checks = {"alpha": (v.positive_float, alpha), "tau": (v.positive_float, tau),
              "lam": (v.nonnegative_float, lam),
              "beta": (v.nonnegative_float if spec.beta_is_kl else v.positive_float, beta)}
    kwargs = {name: checks[name][0](name, checks[name][1]) for name in spec.params}
    kl_weight = v.nonnegative_float("beta", beta) if spec.beta_is_kl else 0.0
    fn = LOSSES[loss]
    if spec.uses_ref:
        def per_pair(logp_chosen, logp_rejected, ref_chosen, ref_rejected, weights=None):
            return fn(logp_chosen, logp_rejected, ref_chosen, ref_rejected, weights=weights, **kwargs)
    else:
        def per_pair(logp_chosen, logp_rejected, ref_chosen, ref_rejected, weights=None):
            return fn(logp_chosen, logp_rejected, weights=weights, **kwargs)
    return per_pair, kl_weight


def aggregate_pairs(data: PairData, weights=None):
    """Distinct triples of the data: flat indices of (ctx, chosen) and (ctx, rejected) into the
    (m·n,) logits table and their mass Σ μ / N, shapes (K,), (K,), (K,), sorted by (ctx, chosen, rejected)."""
    m, n, N = data.n_contexts, data.n_actions, len(data)
    flat = (data.ctx * n + data.chosen) * n + data.rejected
    mu = None
    if weights is not None:
        mu = v.float_array("weights", weights, shape=(N,))
        if np.any(mu < 0):
            raise ValueError("weights must be non-negative")
    if m * n * n <= max(4 * N, 1 << 20):
        mass = np.bincount(flat, weights=mu, minlength=m * n * n)
        keys = np.flatnonzero(mass)
        mass = mass[keys]
    else:   # a huge table with few pairs: sort instead of a dense histogram
        keys, inverse = np.unique(flat, return_inverse=True)
        mass = np.bincount(inverse, weights=mu, minlength=keys.shape[0])
    mass = mass.astype(np.float64) / N
    return keys // n, (keys // (n * n)) * n + keys % n, mass


def _seed_int(seed) -> int:
    """A torch seed from an int, SeedSequence or np.random.Generator (same input ⇒ same seed)."""
    rng = v.rng_from(seed)             # validates: refuses None, bool, negative ints, other types
    if isinstance(seed, (int, np.integer)):
        return int(seed)
    return int(rng.integers(0, 2**62))


class _EmpiricalObjective:
    """The objective of solve_sgd on a logits table: exact on the full data, or on a minibatch."""

    def __init__(self, problem, data, per_pair, kl_weight, weights, *, dtype, device):
        m, n = problem.n_contexts, problem.n_actions
        as_t = lambda a, dt=dtype: torch.as_tensor(np.array(a), dtype=dt, device=device)  # copies: inputs may be read-only
        self.per_pair, self.kl_weight, self.n_actions = per_pair, kl_weight, n
        self.agg_c, self.agg_r, self.agg_mass = aggregate_pairs(data, weights)
        self.log_ref = as_t(problem.log_ref)                              # (m, n)
        self.rho = as_t(problem.context_probs)                            # (m,)
        self.idx_c, self.idx_r = as_t(self.agg_c, torch.int64), as_t(self.agg_r, torch.int64)   # (K,)
        flat_ref = self.log_ref.reshape(-1)
        self.ref_c, self.ref_r = flat_ref.index_select(0, self.idx_c), flat_ref.index_select(0, self.idx_r)
        self.mass = as_t(self.agg_mass)                                   # (K,) count · μ / N
        # When most (ctx, i, j) cells hold data, a dense (m, n, n) pass of the same loss (logp_chosen
        # (m, n, 1) broadcast against logp_rejected (m, 1, n), weight 0 on empty cells) is faster than
        # the gather/scatter of index_select.
        self.dense = self.idx_c.numel() >= DENSE_FILL * m * n * n
        if self.dense:
            W = torch.zeros(m * n * n, dtype=dtype, device=device)
            W[self.idx_c * n + self.idx_r % n] = self.mass                # (x·n + i)·n + j
            self.mass_dense = W.reshape(m, n, n)
        # Minibatches index the N pairs themselves.
        self.pair_c = as_t(data.ctx * n + data.chosen, torch.int64)       # (N,)
        self.pair_r = as_t(data.ctx * n + data.rejected, torch.int64)
        self.pair_mu = None if weights is None else as_t(weights)

    def kl(self, logp):
        """KL(π_z ‖ π_ref) per context, (m,)."""
        return (logp.exp() * (logp - self.log_ref)).sum(dim=-1)

    def _with_kl(self, value, logp):
        return value + self.kl_weight * (self.rho * self.kl(logp)).sum() if self.kl_weight else value

    def full(self, z):
        """The empirical objective L(z) on every pair (a 0-d tensor)."""
        logp = torch.log_softmax(z, dim=-1)
        if self.dense:
            lr = self.log_ref
            value = self.per_pair(logp[:, :, None], logp[:, None, :], lr[:, :, None], lr[:, None, :],
                                  self.mass_dense).sum()
        else:
            flat = logp.reshape(-1)
            value = self.per_pair(flat.index_select(0, self.idx_c), flat.index_select(0, self.idx_r),
                                  self.ref_c, self.ref_r, self.mass).sum()
        return self._with_kl(value, logp)

    def minibatch(self, z, k):
        """Unbiased estimate of L(z) from the pairs k (B,): the batch mean of μ ℓ plus the exact KL term."""
        c, r = self.pair_c.index_select(0, k), self.pair_r.index_select(0, k)
        logp = torch.log_softmax(z, dim=-1)
        flat, flat_ref = logp.reshape(-1), self.log_ref.reshape(-1)
        mu = None if self.pair_mu is None else self.pair_mu.index_select(0, k)
        value = self.per_pair(flat.index_select(0, c), flat.index_select(0, r),
                              flat_ref.index_select(0, c), flat_ref.index_select(0, r), mu).mean()
        return self._with_kl(value, logp)

    def context_mass(self, context_probs):
        """Data mass plus βρ_x per context, (m,): the scale of context x's gradient."""
        m = context_probs.shape[0]
        return np.bincount(self.agg_c // self.n_actions, weights=self.agg_mass, minlength=m) + \
            self.kl_weight * context_probs

    def unbounded(self, m: int) -> bool:
        """Some context's beats graph (of this data) is not strongly connected (SPEC §6)."""
        n = self.n_actions
        beats = np.zeros(m * n * n, dtype=bool)
        beats[(self.agg_c * n + self.agg_r % n)[self.agg_mass > 0]] = True   # (x·n + i)·n + j
        return bool(comparison_graph(beats.reshape(m, n, n)).unbounded.any())


def _batches(N: int, batch_size: int, shuffle: bool, generator, device):
    """Endless minibatch indices: slices of a fresh permutation per epoch, or draws with replacement."""
    while True:
        if not shuffle:
            yield torch.randint(N, (batch_size,), generator=generator, device=device)
            continue
        perm = torch.randperm(N, generator=generator, device=device)
        for start in range(0, N, batch_size):
            yield perm[start:start + batch_size]


def solve_sgd(problem: TabularProblem, data: PairData, *, loss: str = "spo", alpha: float = 1.0,
              beta: float = 0.0, tau: float = 1.0, lam: float = 1.0, weights=None,
              optimizer: str = "adam", lr: float = 0.2, schedule: str = "cosine", final_lr: float = 1e-3,
              batch_size: int | None = None, shuffle: bool = True, steps: int = 1000, seed=0,
              init=None, target=None, tol: float = 1e-6, log_every: int | None = None, callback=None,
              quiet: bool = False, device=None, dtype=torch.float64,
              num_threads: int | None = None, kl_weight: float | None = None) -> SolveResult:
    """argmin_z (1/N) Σ_k μ_k ℓ(logp_chosen, logp_rejected) + β Σ_x ρ_x KL(π_z‖π_ref) by Adam; logits (m, n).

    Full batch on the aggregated counts when batch_size is None; minibatch SGD otherwise, by epochs
    of a random permutation (shuffle=True) or with replacement (module docstring). The learning
    rate decays from `lr` to `lr·final_lr` by `schedule`. `target` (m, n) defaults to softmax(r/α).
    `callback(step, logits)` runs at every logged step; returning True stops. `history` holds
    HISTORY_COLUMNS every `log_every` steps, measured exactly on the full data. Converged means
    max_x,i |∂L/∂z_xi| / mass_x ≤ tol (mass_x: the context's data mass plus βρ_x).
    num_threads=None runs small tables single-threaded (_threads.py). `kl_weight` overrides the
    explicit global KL weight (default: β for spo, 0 for the losses whose β is their own), e.g. to
    add the exact KL term to DPO.
    """
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    if not isinstance(data, PairData):
        raise TypeError(f"data must be a PairData, got {type(data).__name__}")
    m, n = problem.n_contexts, problem.n_actions
    if (data.n_contexts, data.n_actions) != (m, n):
        raise ValueError(f"data has (n_contexts, n_actions) = {(data.n_contexts, data.n_actions)}, "
                         f"problem has {(m, n)}")
    per_pair, default_kl = make_pair_loss(loss, alpha=alpha, beta=beta, tau=tau, lam=lam)
    kl_weight = default_kl if kl_weight is None else v.nonnegative_float("kl_weight", kl_weight)
    alpha = v.positive_float("alpha", alpha)         # also names the default target softmax(r/α)
    v.choice("optimizer", optimizer, OPTIMIZERS)
    v.choice("schedule", schedule, SCHEDULES)
    lr = v.positive_float("lr", lr)
    final_lr = v.positive_float("final_lr", final_lr)
    if final_lr > 1:
        raise ValueError(f"final_lr is the final/initial learning-rate ratio and must be in (0, 1], got {final_lr}")
    steps = v.positive_int("steps", steps)
    tol = v.positive_float("tol", tol)
    if batch_size is not None:
        batch_size = v.positive_int("batch_size", batch_size)
    log_every = max(1, steps // 100) if log_every is None else v.positive_int("log_every", log_every)
    if num_threads is not None:
        num_threads = v.positive_int("num_threads", num_threads)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    target = problem.target(alpha) if target is None else v.float_array("target", target, shape=(m, n))
    z0 = problem.log_ref if init is None else v.float_array("init", init, shape=(m, n))
    if weights is not None:
        weights = v.float_array("weights", weights, shape=(len(data),))
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device("cpu" if device is None else device)

    obj = _EmpiricalObjective(problem, data, per_pair, kl_weight, weights, dtype=dtype, device=device)
    if batch_size is None:
        step_objective = obj.full
    else:
        generator = torch.Generator(device=device).manual_seed(_seed_int(seed))
        batches = _batches(len(data), batch_size, shuffle, generator, device)
        step_objective = lambda z: obj.minibatch(z, next(batches))
    z = torch.as_tensor(np.array(z0), dtype=dtype, device=device).requires_grad_(True)
    target_t = torch.as_tensor(np.array(target), dtype=dtype, device=device)
    opt = OPTIMIZERS[optimizer]([z], lr=lr)
    decay = SCHEDULES[schedule]
    history = []

    def record(step):
        with torch.no_grad():
            logp = torch.log_softmax(z, dim=-1)
            p = logp.exp()
            history.append((step, float(obj.full(z)), float((0.5 * (p - target_t).abs().sum(dim=-1)).max()),
                            float((obj.rho * -(p * logp).sum(dim=-1)).sum()), float((obj.rho * obj.kl(logp)).sum())))
        return callback is not None and bool(callback(step, z.detach()))

    work = (obj.idx_c.numel() if batch_size is None else batch_size) + m * n     # numbers touched per step
    if num_threads is None and device.type == "cpu" and work < SMALL_WORK:
        num_threads = 1
    done = 0
    with torch_threads(num_threads), progress(steps, f"solve_sgd[{loss}]", quiet) as bar:
        stopped = record(0)
        while not stopped and done < steps:
            for group in opt.param_groups:
                group["lr"] = lr * decay(done, steps, final_lr)
            opt.zero_grad(set_to_none=True)
            step_objective(z).backward()
            opt.step()
            done += 1
            if done % log_every == 0 or done == steps:
                bar.update(done - bar.n)
                stopped = record(done)

    z_final = z.detach().requires_grad_(True)
    value = obj.full(z_final)
    (grad,) = torch.autograd.grad(value, z_final)
    grad_norm = float(grad.abs().max())
    err = float((grad.abs().amax(dim=1).cpu().numpy() / np.maximum(obj.context_mass(problem.context_probs), 1e-300)).max())
    logits = torch.log_softmax(z_final.detach(), dim=-1).to(torch.float64).cpu().numpy()

    mode = "full-batch" if batch_size is None else f"minibatch({batch_size})"
    status, converged = "converged", err <= tol
    message = f"{mode} {optimizer}: {done} steps, scaled gradient {err:.2e} (tol {tol:g}), gradient norm {grad_norm:.2e}"
    if PAIR_LOSSES[loss].logistic and kl_weight == 0.0 and obj.unbounded(m):
        status, converged = "no_finite_minimizer", False
        message = (f"no finite minimiser: some context's beats graph is not strongly connected, so with no KL "
                   f"term the {loss} loss sends probabilities to 0; returned the iterate after {done} steps ({message})")
        warnings.warn(message, NoFiniteMinimizerWarning, stacklevel=2)
    elif stopped:
        status = "stopped"
        message = f"stopped by callback at step {done}; " + message
    elif not converged:
        status = "max_steps"
        warnings.warn(f"solve_sgd did not reach tol: {message}", ConvergenceWarning, stacklevel=2)
    return SolveResult(policy=np.exp(logits), logits=logits, loss=float(value.detach()), grad_norm=grad_norm,
                       n_iter=done, converged=bool(converged), message=message, status=status,
                       history=pd.DataFrame(history, columns=list(HISTORY_COLUMNS)))
