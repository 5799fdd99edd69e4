"""Training of the sequence mode: the same per-pair losses as the tabular mode, on sequence log-probs.

Objective (SPEC §5 and §8, scaled exactly as the tabular one):
    L(θ) = Σ_k μ_k ℓ(logp_θ(y_w^k) − logp_θ(y_l^k)) / Σ_k μ_k  +  β · (1/K) Σ_s Σ_t KL_t(θ; x_s, y^s_<t),
the first term an estimate of Σ W μ ℓ (pair mass summing to 1), the second the token-wise estimate of
Σ_x ρ_x KL(π_θ‖π_ref)(x) on online samples y^s from a frozen copy of π_θ refreshed every kl_refresh steps.
Every random draw comes from generators shared by all ranks: each step draws the global batch and a
rank keeps its shard, and gradients are summed over ranks, so torchrun runs follow the one-process math.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from .. import _validation as v
from ..losses import dpo_loss, spo_loss
from ..preferences import PairData
from ..problems import soft_optimal_policy
from ..solvers.exact import solve_exact
from .exact import (enumerate_logq, enumerate_policy, exact_metrics, kl_estimates, kl_gradient_bias,
                    log_policy_from_logq, mean_and_se, model_inputs, prefix_kl, sample_sequences,
                    tokenwise_expectation)
from .model import GPT, GPTConfig, make_model
from .task import SequenceTask, TaskConfig, build_task, enumerate_sequences, sequence_index

CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TrainConfig:
    """Objective, data and optimiser of a sequence-mode run (fixed for a run: a resume must match them)."""

    loss: str = "spo"            # per-pair loss: spo | dpo (LOSS_TERMS)
    alpha: float = 1.0           # SPO softness α; the β = 0 target is softmax(r/α)
    beta: float = 0.0            # SPO: weight of the global KL to π_ref; DPO: its β (> 0)
    weights: str = "none"        # μ: none | confidence (μ_γ = (½(π(y_w)^α + π(y_l)^α))^γ / batch mean)
    gamma: float = 1.0           # exponent of the confidence weights
    sampler: str = "ref"         # shown pairs: ref (y, y' ~ π_ref) | uniform (over the V^L sequences); ties dropped
    n_pairs: int = 0             # 0: fresh pairs every step (population objective); N > 0: one data set of N draws
    batch_size: int = 1024       # pairs per step, over all ranks together
    kl_samples: int = 1024       # online samples per step for the KL term, over all ranks together
    kl_refresh: int = 10         # T: the sampler copy of π_θ is refreshed every T steps
    kl_grad: str = "chain"       # chain (adds the KL-to-go score term: unbiased) | tokenwise (Σ_t ∇KL_t only)
    ref_init: str = "fit"        # π_ref: fit (supervised fit to the task's tabular ref_policy) | init (initial model)
    ref_steps: int = 100         # full-batch Adam steps of the supervised fit
    ref_lr: float = 1e-2         # learning rate of the supervised fit
    steps: int = 1000            # optimiser steps
    lr: float = 3e-3             # peak AdamW learning rate
    lr_min_ratio: float = 0.01   # cosine decay to lr·lr_min_ratio: small steps at the end pin the minimiser
    warmup: int = 50             # linear warm-up steps
    weight_decay: float = 0.0    # off: decay would move the minimiser away from the exact one
    seed: int = 0                # model init, data and online samples (per-rank generators use seed + rank)

    def __post_init__(self):
        v.choice("loss", self.loss, LOSS_TERMS)
        v.positive_float("alpha", self.alpha)
        beta = v.nonnegative_float("beta", self.beta)
        if self.loss == "dpo" and beta == 0:
            raise ValueError("beta must be > 0 for loss='dpo' (it is DPO's inverse temperature)")
        v.choice("weights", self.weights, WEIGHTS)
        v.nonnegative_float("gamma", self.gamma)
        v.choice("sampler", self.sampler, PAIR_SAMPLERS)
        v.positive_int("n_pairs", self.n_pairs, minimum=0)
        for name in ("batch_size", "kl_samples", "kl_refresh", "steps"):
            v.positive_int(name, getattr(self, name))
        v.choice("kl_grad", self.kl_grad, KL_GRADS)
        v.choice("ref_init", self.ref_init, ("fit", "init"))
        v.positive_int("ref_steps", self.ref_steps, minimum=0)
        v.positive_float("ref_lr", self.ref_lr)
        v.positive_float("lr", self.lr)
        ratio = v.nonnegative_float("lr_min_ratio", self.lr_min_ratio)
        if ratio > 1:
            raise ValueError(f"lr_min_ratio must lie in [0, 1], got {ratio}")
        v.positive_int("warmup", self.warmup, minimum=0)
        v.nonnegative_float("weight_decay", self.weight_decay)
        v.positive_int("seed", self.seed, minimum=0)


@dataclass(frozen=True)
class RunConfig:
    """How a run executes (may change between an interrupted run and its resume)."""

    device: str = "auto"          # auto | cpu | cuda
    amp: bool = True              # bf16 autocast on CUDA (never on CPU; --no-amp turns it off); losses stay float32
    compile: bool = False         # torch.compile the training forward on CUDA (ignored on CPU)
    dedup: bool = True            # forward each distinct (context, sequence) row once: same math, far fewer rows
    threads: int = 1              # CPU intra-op threads for the run (0 = torch's default); small models run fastest on 1
    log_interval: int = 100       # a log line (and an exact evaluation) every this many steps; 0 = none
    eval_samples: int = 4096      # samples for the final Monte Carlo KL estimators
    checkpoint: str | None = None  # checkpoint path (written atomically); None = no checkpoints
    checkpoint_interval: int = 500  # steps between checkpoints (plus one at the end)
    resume: bool = False          # continue from `checkpoint`
    stop_after: int | None = None  # stop after this many steps in total, as if interrupted (checkpoint first)

    def __post_init__(self):
        v.choice("device", self.device, ("auto", "cpu", "cuda"))
        v.positive_int("log_interval", self.log_interval, minimum=0)
        v.positive_int("threads", self.threads, minimum=0)
        v.positive_int("eval_samples", self.eval_samples, minimum=2)
        v.positive_int("checkpoint_interval", self.checkpoint_interval)
        if self.resume and not self.checkpoint:
            raise ValueError("resume needs a checkpoint path")
        if self.stop_after is not None:
            v.positive_int("stop_after", self.stop_after)


@dataclass
class TrainResult:
    """Final exact metrics (flat dict), the enumerated policy and π_ref (None beyond ENUM_LIMIT), and the log rows."""

    metrics: dict
    policy: np.ndarray | None
    ref_policy: np.ndarray | None
    history: list = field(default_factory=list)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or from another configuration."""


# --------------------------------------------------------------------------- loss terms

class LossTerm(NamedTuple):
    fn: object          # (logp_chosen, logp_rejected, ref_chosen, ref_rejected, cfg, weights) -> per-pair loss
    uses_ref: bool      # needs π_ref's log-probs of the pair
    kl_weight: object   # cfg -> weight of the token-wise global KL term


LOSS_TERMS = {
    "spo": LossTerm(lambda lc, lr, rc, rr, cfg, w: spo_loss(lc, lr, alpha=cfg.alpha, weights=w), False,
                    lambda cfg: cfg.beta),
    # DPO's KL is implicit in its margin; it gets no separate KL term.
    "dpo": LossTerm(lambda lc, lr, rc, rr, cfg, w: dpo_loss(lc, lr, rc, rr, beta=cfg.beta, weights=w), True,
                    lambda cfg: 0.0),
}


def _confidence_weights(logp_chosen, logp_rejected, cfg):
    """μ_γ = (½(π(y_w)^α + π(y_l)^α))^γ, symmetric in the pair (SPEC §4); normalised by its global sum later."""
    s = torch.logaddexp(cfg.alpha * logp_chosen, cfg.alpha * logp_rejected) - math.log(2.0)
    return torch.exp(cfg.gamma * s).detach()


WEIGHTS = {
    "none": lambda lc, lr, cfg: torch.ones_like(lc).detach(),
    "confidence": _confidence_weights,
}


def _kl_tokenwise(logq, logq_ref, seqs):
    """Σ_t KL_t per sample, differentiated as it stands (ignores that the samples depend on θ)."""
    return prefix_kl(logq, logq_ref).sum(-1)


def _kl_chain(logq, logq_ref, seqs):
    """Σ_t KL_t plus Σ_t sg(Σ_{s>t} KL_s)(log π(y_t|y_<t) − sg(·)): same value, the exact gradient in expectation."""
    kl_t = prefix_kl(logq, logq_ref)                                   # (K, L)
    to_go = kl_t.detach().flip(-1).cumsum(-1).flip(-1) - kl_t.detach()
    logpi = logq.gather(-1, seqs[..., None]).squeeze(-1)
    return kl_t.sum(-1) + (to_go * (logpi - logpi.detach())).sum(-1)


KL_GRADS = {"tokenwise": _kl_tokenwise, "chain": _kl_chain}
PAIR_SAMPLERS = ("ref", "uniform")


# --------------------------------------------------------------------------- distributed set-up

@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _setup_distributed(device: str) -> _Dist:
    """Rank, world size and device from torchrun's environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(rank, world, dev, owns)


def _shard(d: _Dist, *tensors):
    """Rank r keeps rows r, r + world, ...: the union over ranks is the global batch."""
    return [t[d.rank::d.world] for t in tensors]


# --------------------------------------------------------------------------- data

class _SequenceSampler:
    """Draws y ~ π(·|x) from given uniforms: inverse CDF on the enumerated table when enumerable, else autoregressive."""

    def __init__(self, model, task: SequenceTask, device):
        self.model, self.task, self.device = model, task, device
        self.cdf = None
        if task.enumerable:
            pol = enumerate_policy(model, task, device=device)           # (m, V^L) float64
            self.cdf = torch.as_tensor(np.cumsum(pol, axis=1))
            self.seqs = torch.as_tensor(enumerate_sequences(task.vocab_size, task.seq_len))

    def __call__(self, ctx: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        if self.cdf is not None:
            cdf = self.cdf[ctx]
            idx = torch.searchsorted(cdf, (uniforms[:, :1].double() * cdf[:, -1:]).contiguous(), right=True)[:, 0]
            return self.seqs[idx.clamp_(max=self.cdf.shape[1] - 1)]
        return sample_sequences(self.model, ctx.to(self.device), uniforms.to(self.device),
                                self.task.vocab_size).cpu()


def _draw_contexts(u: torch.Tensor, context_probs: np.ndarray) -> torch.Tensor:
    cdf = torch.as_tensor(np.cumsum(context_probs))
    return torch.searchsorted(cdf, (u.double() * cdf[-1])[:, None], right=True)[:, 0].clamp_(max=len(context_probs) - 1)


def draw_pairs(task: SequenceTask, sampler: str, ref_sampler, gen: torch.Generator, n: int, d: _Dist | None = None):
    """n labelled comparisons (this rank's shard of them): x ~ ρ, shown y, y' from the sampler, y ≻ y' w.p. σ(r(y) − r(y')).

    Returns CPU tensors ctx (k,), chosen (k, L), rejected (k, L), valid (k,) bool (valid: y ≠ y', ties are dropped).
    """
    L, V = task.seq_len, task.vocab_size
    u = torch.rand(n, 2 * L + 2, generator=gen, dtype=torch.float64)     # one draw for the whole global batch
    if d is not None:
        (u,) = _shard(d, u)
    ctx = _draw_contexts(u[:, 0], task.context_probs)
    u1, u2, u_label = u[:, 1:L + 1], u[:, L + 1:2 * L + 1], u[:, -1]
    if sampler == "uniform":
        first, second = (torch.floor(w * V).long().clamp_(max=V - 1) for w in (u1, u2))
    else:
        first, second = ref_sampler(ctx, u1), ref_sampler(ctx, u2)
    c = ctx.numpy()
    margin = task.rewards(c, first.numpy()) - task.rewards(c, second.numpy())
    first_wins = u_label < torch.as_tensor(1.0 / (1.0 + np.exp(-margin)))   # Bradley–Terry (SPEC §2)
    chosen = torch.where(first_wins[:, None], first, second)
    rejected = torch.where(first_wins[:, None], second, first)
    return ctx, chosen, rejected, (first != second).any(dim=1)


# --------------------------------------------------------------------------- reference policy

def fit_reference(model: GPT, task: SequenceTask, *, steps: int, lr: float, device) -> GPT:
    """Supervised fit: minimise Σ_x ρ_x Σ_y π_ref^tab(y|x)(−log π(y|x)) by enumeration, full batch; returns a frozen copy."""
    ref = copy.deepcopy(model)
    if steps:
        if task.ref_policy is None:
            raise ValueError("ref_init='fit' needs a tabular ref_policy (an enumerable task); use ref_init='init'")
        target = torch.as_tensor(task.ref_policy * task.context_probs[:, None], dtype=torch.float32, device=device)
        opt = torch.optim.Adam(ref.parameters(), lr=lr)
        for _ in range(steps):
            logq, prefixes = enumerate_logq(ref, task.n_contexts, task.vocab_size, task.seq_len, device=device)
            loss = -(target * log_policy_from_logq(logq, prefixes)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _exact_solution(task, cfg: TrainConfig, ref_policy, data):
    """The exact minimiser of the same objective (None where none is computable), float64 (m, V^L)."""
    problem = task.problem(ref_policy)
    if cfg.loss == "dpo":
        if data is not None:
            return None, "no oracle for DPO on a fixed data set"
        # Population DPO optimum: π ∝ π_ref exp(r/β) (SPEC §6).
        return soft_optimal_policy(problem.rewards / cfg.beta + np.log(ref_policy), 1.0), "pi_ref*exp(r/beta)"
    if cfg.weights != "none" and cfg.beta > 0:
        return None, "no exact solver for model-dependent weights with beta > 0"
    if data is None and cfg.beta == 0:
        return problem.target(cfg.alpha), "softmax(r/alpha)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_exact(problem, alpha=cfg.alpha, beta=cfg.beta, data=data,
                          sampler=cfg.sampler if data is None else "uniform")
    if not res.converged:
        return None, f"solve_exact: {res.message}"
    return res.policy, "solve_exact" + ("" if not caught else f" ({caught[0].message})")


# --------------------------------------------------------------------------- checkpoints

def _rng_state(device) -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": (np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate()}


def _set_rng_state(state: dict, device):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


def save_checkpoint(path: str, state: dict):
    """torch.save to a temporary file in the same directory, fsync, then os.replace: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """The checkpoint dict; CheckpointError naming the file if it is missing, truncated or corrupt."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # torch raises RuntimeError, EOFError, UnpicklingError ... for a damaged file
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a version-{CHECKPOINT_VERSION} spo_tabular transformer checkpoint")
    return state


def _configs(task_cfg, model_cfg, cfg) -> dict:
    return {"task": asdict(task_cfg), "model": asdict(model_cfg), "train": asdict(cfg)}


# --------------------------------------------------------------------------- training

def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from lr to lr·lr_min_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup)
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _row_codes(task, ctx, seqs):
    """One integer per (context, sequence) row, to deduplicate the forward pass (exact: gathers keep the math)."""
    if task.n_contexts * task.n_sequences >= 2 ** 62:
        return None
    weights = task.vocab_size ** torch.arange(task.seq_len - 1, -1, -1)
    return ctx * task.n_sequences + (seqs * weights).sum(-1)


def _unique_rows(task, ctx, seqs, dedup=True):
    """(ctx_u, seqs_u, inverse): the distinct rows and, for every input row, its position among them."""
    codes = _row_codes(task, ctx, seqs) if dedup else None
    if codes is None:
        return ctx, seqs, torch.arange(ctx.shape[0])
    uniq, inverse = torch.unique(codes, return_inverse=True)
    # One representative input row per distinct code (any will do: the rows are equal).
    rep = torch.empty(uniq.shape[0], dtype=torch.long).scatter_(0, inverse, torch.arange(codes.shape[0]))
    return ctx[rep], seqs[rep], inverse


def _step_loss(model_fwd, ref, task, cfg, d, pairs, kl_batch, autocast, dedup=True):
    """This rank's share of L(θ) (summing over ranks gives the global loss) and the logged statistics."""
    term = LOSS_TERMS[cfg.loss]
    ctx, chosen, rejected, valid = pairs
    kl_weight = term.kl_weight(cfg)
    n = ctx.shape[0]
    all_ctx, all_seqs = torch.cat([ctx, ctx]), torch.cat([chosen, rejected])
    if kl_weight:
        all_ctx, all_seqs = torch.cat([all_ctx, kl_batch[0]]), torch.cat([all_seqs, kl_batch[1]])
    u_ctx, u_seqs, inv = _unique_rows(task, all_ctx, all_seqs, dedup)
    u_ctx, u_seqs, inv = u_ctx.to(d.device), u_seqs.to(d.device), inv.to(d.device)
    tokens = model_inputs(u_ctx, u_seqs, task.vocab_size)
    with autocast:
        logits = model_fwd(tokens)
    logq_u = torch.log_softmax(logits.float(), dim=-1)                 # (rows, L, V)
    logp_u = logq_u.gather(-1, u_seqs[..., None]).squeeze(-1).sum(-1)   # sequence log-probs
    logq_ref_u = None
    if term.uses_ref or kl_weight:
        with torch.no_grad():
            logq_ref_u = torch.log_softmax(ref(tokens).float(), dim=-1)
    logp_c, logp_r = logp_u[inv[:n]], logp_u[inv[n:2 * n]]
    ref_c = ref_r = None
    if term.uses_ref:
        logp_ref_u = logq_ref_u.gather(-1, u_seqs[..., None]).squeeze(-1).sum(-1)
        ref_c, ref_r = logp_ref_u[inv[:n]], logp_ref_u[inv[n:2 * n]]
    valid = valid.to(d.device)
    mu = WEIGHTS[cfg.weights](logp_c, logp_r, cfg) * valid
    per_pair = term.fn(logp_c, logp_r, ref_c, ref_r, cfg, mu)          # the same functions as the tabular mode
    mu_total = d.all_sum(mu.sum().detach().clone())                    # global Σμ: Σ W μ ℓ / Σ μ over the global batch
    loss = per_pair.sum() / mu_total.clamp_min(1e-30)
    stats = {"pref": loss.detach()}
    if kl_weight:
        k_inv = inv[2 * n:]
        kl_seqs = kl_batch[1].to(d.device)
        per_sample = KL_GRADS[cfg.kl_grad](logq_u[k_inv], logq_ref_u[k_inv], kl_seqs)
        kl_term = per_sample.sum() / cfg.kl_samples
        loss = loss + kl_weight * kl_term
        stats["kl_est"] = kl_term.detach()
    return loss, stats, tokens.numel()


def _resolve_configs(task_cfg, model_cfg, cfg):
    task_cfg = task_cfg or TaskConfig()
    cfg = cfg or TrainConfig()
    base = model_cfg or GPTConfig()
    # The model's vocabulary, prompts and length follow the task.
    model_cfg = GPTConfig(**{**asdict(base), "vocab_size": task_cfg.vocab_size,
                             "n_contexts": task_cfg.n_contexts, "seq_len": task_cfg.seq_len})
    return task_cfg, model_cfg, cfg


def train(task_cfg: TaskConfig | None = None, model_cfg: GPTConfig | None = None,
          cfg: TrainConfig | None = None, run: RunConfig | None = None, *, log=print) -> TrainResult | None:
    """Train π_θ on the sequence task; returns the final exact metrics on rank 0 (None on other ranks)."""
    t_start = time.perf_counter()
    task_cfg, model_cfg, cfg = _resolve_configs(task_cfg, model_cfg, cfg)
    run = run or RunConfig()
    d = _setup_distributed(run.device)
    threads = torch.get_num_threads()
    if run.threads and d.device.type == "cpu":
        torch.set_num_threads(run.threads)
    try:
        result = _train(task_cfg, model_cfg, cfg, run, d, log if d.main else (lambda *a, **k: None), t_start)
        if d.world > 1:                        # the ranks leave together, after rank 0's final evaluation
            dist.barrier()
        return result
    finally:
        torch.set_num_threads(threads)
        if d.owns_group:
            dist.destroy_process_group()


def _train(task_cfg, model_cfg, cfg, run, d, log, t_start):
    task = build_task(task_cfg)
    if cfg.ref_init == "fit" and task.ref_policy is None:
        raise ValueError("ref_init='fit' needs an enumerable task with a tabular ref_policy; use ref_init='init'")
    if cfg.n_pairs and not task.enumerable:
        raise ValueError("n_pairs > 0 (a fixed data set) is supported only for enumerable tasks; use n_pairs=0")
    # Per-rank seeds for the process-global generators (dropout); the data generators below are shared.
    torch.manual_seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    random.seed(cfg.seed + d.rank)

    model = make_model(model_cfg, seed=cfg.seed).to(d.device)
    ref = fit_reference(model, task, steps=cfg.ref_steps if cfg.ref_init == "fit" else 0, lr=cfg.ref_lr,
                        device=d.device)
    if d.world > 1:                            # every rank fits the same π_ref from the same seed; made certain
        for p in ref.parameters():
            dist.broadcast(p.data, src=0)
    model.load_state_dict(ref.state_dict())                            # π_θ starts at π_ref, as after SFT
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    ref_sampler = _SequenceSampler(ref, task, d.device)
    ref_policy = enumerate_policy(ref, task, device=d.device) if task.enumerable else None

    data, data_pairs = None, None
    if cfg.n_pairs:
        gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        ctx, chosen, rejected, valid = draw_pairs(task, cfg.sampler, ref_sampler, gen, cfg.n_pairs)
        data_pairs = (ctx[valid], chosen[valid], rejected[valid])
        V = task.vocab_size
        data = PairData(data_pairs[0].numpy(), sequence_index(data_pairs[1].numpy(), V),
                        sequence_index(data_pairs[2].numpy(), V), task.n_contexts, task.n_sequences)

    exact_solution, exact_kind = (None, "not enumerable")
    if d.main and task.enumerable:
        exact_solution, exact_kind = _exact_solution(task, cfg, ref_policy, data)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                            fused=True)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    pair_gen = torch.Generator().manual_seed(cfg.seed + 1)
    kl_gen = torch.Generator().manual_seed(cfg.seed + 2)
    start = 0
    configs = _configs(task_cfg, model_cfg, cfg)
    if run.resume:
        state = load_checkpoint(run.checkpoint)
        if state["configs"] != configs:
            diff = [f"{k}.{f}" for k in configs for f in configs[k] if state["configs"][k].get(f) != configs[k][f]]
            raise CheckpointError(f"checkpoint {run.checkpoint} was written with another configuration "
                                  f"(differs in {', '.join(diff)})")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        frozen.load_state_dict(state["frozen"])
        pair_gen.set_state(state["pair_gen"])
        kl_gen.set_state(state["kl_gen"])
        if d.rank < len(state["rng"]):
            _set_rng_state(state["rng"][d.rank], d.device)
        start = state["step"]
        log(f"resumed from {run.checkpoint} at step {start}")

    use_cuda = d.device.type == "cuda"
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_cuda and run.amp
                else contextlib.nullcontext())
    model_fwd = torch.compile(model, dynamic=True) if (run.compile and use_cuda) else model
    if run.compile and not use_cuda:
        log("note: --compile applies on CUDA only; running eagerly on CPU")
    log(f"transformer: V={task.vocab_size} L={task.seq_len} m={task.n_contexts} ({task.n_sequences} sequences), "
        f"{model.n_params()} parameters, loss={cfg.loss} alpha={cfg.alpha:g} beta={cfg.beta:g}, "
        f"device={d.device.type} world={d.world}, exact reference: {exact_kind}")

    history, tokens_seen, pairs_seen, t_loop, t_aside = [], 0, 0, time.perf_counter(), 0.0
    stop = cfg.steps if run.stop_after is None else min(cfg.steps, run.stop_after)
    kl_sampler = None
    needs_kl = bool(LOSS_TERMS[cfg.loss].kl_weight(cfg))
    for step in range(start, stop):
        if step % cfg.kl_refresh == 0:         # online samples come from a copy of π_θ refreshed every T steps
            frozen.load_state_dict(model.state_dict())
            kl_sampler = None
        if needs_kl and kl_sampler is None:
            kl_sampler = _SequenceSampler(frozen, task, d.device)
        if data_pairs is None:
            pairs = draw_pairs(task, cfg.sampler, ref_sampler, pair_gen, cfg.batch_size, d)
        else:
            idx = torch.randint(data_pairs[0].shape[0], (cfg.batch_size,), generator=pair_gen)
            (idx,) = _shard(d, idx)
            pairs = (*(t[idx] for t in data_pairs), torch.ones(idx.shape[0], dtype=torch.bool))
        kl_batch = None
        if needs_kl:
            u = torch.rand(cfg.kl_samples, task.seq_len + 1, generator=kl_gen, dtype=torch.float64)
            (u,) = _shard(d, u)
            k_ctx = _draw_contexts(u[:, 0], task.context_probs)
            kl_batch = (k_ctx, kl_sampler(k_ctx, u[:, 1:]))
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss, stats, n_tokens = _step_loss(model_fwd, ref, task, cfg, d, pairs, kl_batch, autocast, run.dedup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if d.world > 1:                        # Σ over ranks of the shard losses is the global loss: sum gradients
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        opt.step()
        tokens_seen += n_tokens * d.world
        pairs_seen += cfg.batch_size
        done = step + 1
        t_before = time.perf_counter()        # logging and checkpoints are timed apart from the steps
        if run.log_interval and (done % run.log_interval == 0 or done == stop):
            # Every rank holds its share of the loss: the global value is their sum (a collective on all ranks).
            shares = d.all_sum(torch.stack([loss.detach(), stats.get("kl_est", torch.zeros((), device=d.device))]))
            if d.main:
                row = _log_row(model, task, cfg, ref_policy, exact_solution, d, done, shares.tolist(),
                               tokens_seen, t_before - t_loop - t_aside, start, stop)
                history.append(row)
                log(_format_row(row, cfg.steps))
        if run.checkpoint and (done % run.checkpoint_interval == 0 or done == stop):
            _write_checkpoint(run.checkpoint, d, done, model, opt, frozen, pair_gen, kl_gen, configs)
        t_aside += time.perf_counter() - t_before

    t_loop_end = time.perf_counter()
    if not d.main:
        return None
    model.eval()
    final = _final_metrics(model, ref, frozen, task, cfg, run, ref_policy, exact_solution, d)
    loop_s = max(t_loop_end - t_loop - t_aside, 1e-9)
    final.update({"step": stop, "steps": cfg.steps, "wall_s": time.perf_counter() - t_start,
                  "step_s": loop_s / max(stop - start, 1), "tokens_per_s": tokens_seen / loop_s,
                  "pairs_per_s": pairs_seen / loop_s,
                  "n_params": model.n_params(), "device": d.device.type, "world_size": d.world,
                  "exact_reference": exact_kind, "config": configs})
    policy = enumerate_policy(model, task, device=d.device) if task.enumerable else None
    return TrainResult(final, policy, ref_policy, history)


def _write_checkpoint(path, d, done, model, opt, frozen, pair_gen, kl_gen, configs):
    rng = [_rng_state(d.device)]
    if d.world > 1:                            # every rank's own generators (per-rank seeds)
        gathered = [None] * d.world
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if d.main:
        save_checkpoint(path, {"version": CHECKPOINT_VERSION, "step": done, "model": model.state_dict(),
                               "optimizer": opt.state_dict(), "frozen": frozen.state_dict(),
                               "pair_gen": pair_gen.get_state(), "kl_gen": kl_gen.get_state(),
                               "rng": rng, "configs": configs, "world_size": d.world})
    if d.world > 1:
        dist.barrier()


def _log_row(model, task, cfg, ref_policy, exact_solution, d, done, shares, tokens, elapsed, start, stop) -> dict:
    loss, kl_est = shares
    row = {"step": done, "loss": loss, "kl_tokenwise": kl_est, "tokens_per_s": tokens / max(elapsed, 1e-9),
           "eta_s": elapsed / max(done - start, 1) * (stop - done)}
    if task.enumerable:                        # exact TV and KL by enumeration
        model.eval()
        policy = enumerate_policy(model, task, device=d.device)
        model.train()
        m = exact_metrics(policy, ref_policy, task, alpha=cfg.alpha, exact_solution=exact_solution)
        row["tv"] = m.get("tv_exact", m["tv_target"])
        row["kl"] = m["kl_ref"]
    return row


def _format_row(row: dict, steps: int) -> str:
    tv = f"{row['tv']:.4f}" if "tv" in row else "n/a"
    kl = f"{row['kl']:.4f}" if "kl" in row else f"~{row['kl_tokenwise']:.4f}"
    return (f"step {row['step']:>6d}/{steps}  loss {row['loss']:.5f}  tv {tv}  kl {kl}  "
            f"tok/s {row['tokens_per_s']:.3g}  eta {row['eta_s']:.0f}s")


def _final_metrics(model, ref, frozen, task, cfg, run, ref_policy, exact_solution, d) -> dict:
    """Exact metrics by enumeration (when enumerable) plus the Monte Carlo KL estimators on fresh samples."""
    out = {}
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    u = torch.rand(run.eval_samples, task.seq_len + 1, generator=gen, dtype=torch.float64)
    ctx = _draw_contexts(u[:, 0], task.context_probs)
    with torch.no_grad():
        seqs = _SequenceSampler(model, task, d.device)(ctx, u[:, 1:]).to(d.device)
        tokens = model_inputs(ctx.to(d.device), seqs, task.vocab_size)
        est = kl_estimates(torch.log_softmax(model(tokens).float(), -1),
                           torch.log_softmax(ref(tokens).float(), -1), seqs)
    for name, values in est.items():
        out[f"kl_{name}_mc"], out[f"kl_{name}_se"] = mean_and_se(values)
    if task.enumerable:
        policy = enumerate_policy(model, task, device=d.device)
        out.update(exact_metrics(policy, ref_policy, task, alpha=cfg.alpha, exact_solution=exact_solution))
        m, V, L = task.n_contexts, task.vocab_size, task.seq_len
        with torch.no_grad():
            logq, prefixes = enumerate_logq(model, m, V, L, device=d.device)
            logq_ref, _ = enumerate_logq(ref, m, V, L, device=d.device)
            logq_frozen, _ = enumerate_logq(frozen, m, V, L, device=d.device)
            expect = tokenwise_expectation(logq, logq_ref, logq_frozen, prefixes).double().cpu().numpy()
        out["kl_tokenwise_expected"] = float(np.dot(task.context_probs, expect))
        out["kl_tokenwise_bias"] = out["kl_tokenwise_expected"] - out["kl_ref"]
        bias = kl_gradient_bias(model, ref, task, device=d.device)
        out["kl_grad_bias_tokenwise"], out["kl_grad_bias_chain"] = bias["tokenwise"], bias["chain"]
        if cfg.ref_init == "fit" and task.ref_policy is not None:
            out["ref_fit_tv"] = float(np.max(0.5 * np.abs(ref_policy - task.ref_policy).sum(1)))
    return out
