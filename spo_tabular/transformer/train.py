"""Training of the sequence mode: the same per-pair losses as the tabular mode, on sequence log-probs.

Objective (SPEC §5 and §8, scaled exactly as the tabular one):
    L(θ) = Σ_k μ_k ℓ(logp_θ(y_w^k) − logp_θ(y_l^k)) / Σ_k μ_k  +  β (1/K) Σ_s Σ_t KL_t(θ; x_s, y^s_<t),
the first term an estimate of Σ W μ ℓ (pair mass summing to 1), the second the token-wise estimate of
Σ_x ρ_x KL(π_θ‖π_ref)(x) on online samples y^s from a frozen copy of π_θ refreshed every kl_refresh steps.
Every random draw comes from generators shared by all ranks (data.py, distributed.py), so torchrun runs
follow the one-process math.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
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
from ..problems import soft_optimal_policy
from ..solvers.exact import solve_exact
from .checkpoint import (CHECKPOINT_VERSION, CheckpointError, load_checkpoint, rng_state, save_checkpoint,
                         set_rng_state)
from .data import PAIR_SAMPLERS, PreferenceData, SequenceSampler, draw_online
from .distributed import Dist, setup_distributed
from .exact import (enumerate_logq, enumerate_policy, exact_metrics, kl_estimates, kl_gradient_bias,
                    log_policy_from_logq, mean_and_se, model_inputs, prefix_kl, tokenwise_expectation)
from .model import GPT, GPTConfig, make_model
from .task import SequenceTask, TaskConfig, build_task


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
    threads: int = 1              # CPU intra-op threads (0 = torch's default); small models run fastest on 1
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
    """μ_γ = (½(π(y_w)^α + π(y_l)^α))^γ, symmetric in the pair (SPEC §4); step_loss divides by Σμ."""
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
    """Σ_t KL_t + Σ_t sg(Σ_{s>t} KL_s)(log π(y_t|y_<t) − sg(·)): same value, exact gradient in expectation."""
    kl_t = prefix_kl(logq, logq_ref)                                   # (K, L)
    to_go = kl_t.detach().flip(-1).cumsum(-1).flip(-1) - kl_t.detach()
    logpi = logq.gather(-1, seqs[..., None]).squeeze(-1)
    return kl_t.sum(-1) + (to_go * (logpi - logpi.detach())).sum(-1)


KL_GRADS = {"tokenwise": _kl_tokenwise, "chain": _kl_chain}


# --------------------------------------------------------------------------- reference policy and exact target

def fit_reference(model: GPT, task: SequenceTask, *, steps: int, lr: float, device) -> GPT:
    """Frozen copy fitted by minimising Σ_x ρ_x Σ_y π_ref^tab(y|x)(−log π(y|x)), enumerated, full batch."""
    ref = copy.deepcopy(model)
    if steps:
        if task.ref_policy is None:
            raise ValueError("ref_init='fit' needs an enumerable task with a tabular ref_policy; use ref_init='init'")
        target = torch.as_tensor(task.ref_policy * task.context_probs[:, None], dtype=torch.float32, device=device)
        opt = torch.optim.Adam(ref.parameters(), lr=lr)
        for _ in range(steps):
            logq, prefixes = enumerate_logq(ref, task.n_contexts, task.vocab_size, task.seq_len, device=device)
            loss = -(target * log_policy_from_logq(logq, prefixes)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return _frozen(ref)


def _frozen(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def exact_solution(task: SequenceTask, cfg: TrainConfig, ref_policy, data=None):
    """(policy (m, V^L) float64 or None, what it is): the exact minimiser of the same objective over the same π_ref."""
    problem = task.problem(ref_policy)
    if cfg.loss == "dpo":
        if data is not None:
            return None, "none (DPO on a fixed data set)"
        # Population DPO optimum: π ∝ π_ref exp(r/β) (SPEC §6).
        return soft_optimal_policy(problem.rewards / cfg.beta + np.log(ref_policy), 1.0), "pi_ref*exp(r/beta)"
    if cfg.weights != "none" and cfg.beta > 0:
        return None, "none (model-dependent weights with beta > 0)"
    if data is None and cfg.beta == 0:
        return problem.target(cfg.alpha), "softmax(r/alpha)"      # Theorem 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_exact(problem, alpha=cfg.alpha, beta=cfg.beta, data=data,
                          sampler=cfg.sampler if data is None else "uniform")
    if not res.converged:
        return None, f"none (solve_exact: {res.message})"
    return res.policy, "solve_exact" + (f" ({caught[0].message})" if caught else "")


# --------------------------------------------------------------------------- one step

def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from lr to lr·lr_min_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup)
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _row_bucket(rows: int) -> int:
    """The smallest multiple of 2^(bit_length(rows) − 4) that is ≥ rows: at most 12.5% more, 8 sizes an octave."""
    step = 1 << max(rows.bit_length() - 4, 0)
    return -(-rows // step) * step


def _unique_rows(task, ctx, seqs, dedup=True, pad=False):
    """(ctx_u, seqs_u, inverse): the distinct (context, sequence) rows and each input row's position among them.

    Exact: the per-row outputs are gathered back, so the loss and its gradient are unchanged. With
    `pad` the distinct rows are padded to `_row_bucket` rows (repeats of the first, which no input
    row points to), so the forward passes see a few recurring batch sizes: on CUDA every new size
    pays for kernel and library plan selection again.
    """
    if not dedup or task.n_contexts * task.n_sequences >= 2 ** 62:
        return ctx, seqs, torch.arange(ctx.shape[0])
    codes = ctx * task.n_sequences + (seqs * task.vocab_size ** torch.arange(task.seq_len - 1, -1, -1)).sum(-1)
    uniq, inverse = torch.unique(codes, return_inverse=True)
    first = torch.empty(uniq.shape[0], dtype=torch.long).scatter_(0, inverse, torch.arange(codes.shape[0]))
    if pad:
        first = torch.cat([first, first[:1].expand(_row_bucket(first.shape[0]) - first.shape[0])])
    return ctx[first], seqs[first], inverse


def step_loss(model_fwd, ref, task, cfg: TrainConfig, d: Dist, pairs, online, autocast=contextlib.nullcontext(),
              dedup=True):
    """This rank's share of L(θ) (the shares sum to the global loss), its statistics, and the tokens forwarded."""
    term = LOSS_TERMS[cfg.loss]
    kl_weight = term.kl_weight(cfg)
    ctx, chosen, rejected, valid = pairs
    n = ctx.shape[0]
    rows_ctx, rows_seqs = [ctx, ctx], [chosen, rejected]
    if kl_weight:
        rows_ctx.append(online[0])
        rows_seqs.append(online[1])
    rows = _unique_rows(task, torch.cat(rows_ctx), torch.cat(rows_seqs), dedup, pad=d.device.type == "cuda")
    u_ctx, u_seqs, inv = (t.to(d.device) for t in rows)
    tokens = model_inputs(u_ctx, u_seqs, task.vocab_size)
    with autocast:
        logits = model_fwd(tokens)
    logq = torch.log_softmax(logits.float(), dim=-1)                    # (rows, L, V), float32 under autocast too
    logp = logq.gather(-1, u_seqs[..., None]).squeeze(-1).sum(-1)      # sequence log-probs (rows,)
    logq_ref = ref_c = ref_r = None
    if term.uses_ref or kl_weight:
        with torch.no_grad():
            logq_ref = torch.log_softmax(ref(tokens).float(), dim=-1)
    if term.uses_ref:
        logp_ref = logq_ref.gather(-1, u_seqs[..., None]).squeeze(-1).sum(-1)
        ref_c, ref_r = logp_ref[inv[:n]], logp_ref[inv[n:2 * n]]
    logp_c, logp_r = logp[inv[:n]], logp[inv[n:2 * n]]
    mu = WEIGHTS[cfg.weights](logp_c, logp_r, cfg) * valid.to(d.device)
    per_pair = term.fn(logp_c, logp_r, ref_c, ref_r, cfg, mu)          # the same functions as the tabular mode
    # Σ μ ℓ / Σ μ over the global batch: the pair mass sums to 1, as in the tabular objective (SPEC §5).
    loss = per_pair.sum() / d.all_sum(mu.sum().detach().clone()).clamp_min(1e-30)
    stats = {"pref": loss.detach()}
    if kl_weight:
        k = inv[2 * n:]
        kl = KL_GRADS[cfg.kl_grad](logq[k], logq_ref[k], online[1].to(d.device)).sum() / cfg.kl_samples
        loss = loss + kl_weight * kl
        stats["kl_est"] = kl.detach()
    return loss, stats, tokens.numel()


# --------------------------------------------------------------------------- training

def task_fingerprint(task: SequenceTask) -> dict:
    """What identifies a task given as an object (checkpoints compare it): sizes and a hash of r, ρ, π_ref."""
    h = hashlib.sha256()
    if task.enumerable:
        h.update(task.reward_table().tobytes())
    else:                                      # rewards of 4096 fixed random sequences per context
        seqs = np.random.default_rng(0).integers(0, task.vocab_size, size=(4096, task.seq_len))
        for x in range(task.n_contexts):
            h.update(np.asarray(task.rewards(np.full(4096, x), seqs), dtype=np.float64).tobytes())
    h.update(task.context_probs.tobytes())
    if task.ref_policy is not None:
        h.update(task.ref_policy.tobytes())
    return {"vocab_size": task.vocab_size, "seq_len": task.seq_len, "n_contexts": task.n_contexts,
            "sha256": h.hexdigest()}


def train(task_cfg: TaskConfig | None = None, model_cfg: GPTConfig | None = None,
          cfg: TrainConfig | None = None, run: RunConfig | None = None, *, task: SequenceTask | None = None,
          log=print) -> TrainResult | None:
    """Train π_θ on the task of task_cfg (or the given SequenceTask); final metrics on rank 0, None on the others."""
    t_start = time.perf_counter()
    if task is not None and task_cfg is not None:
        raise ValueError("give either task_cfg or task, not both")
    if task is None:
        task = build_task(task_cfg or TaskConfig())
        task_id = asdict(task_cfg or TaskConfig())
    elif isinstance(task, SequenceTask):
        task_id = task_fingerprint(task)
    else:
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    # The model's vocabulary, prompts and length follow the task.
    model_cfg = GPTConfig(**{**asdict(model_cfg or GPTConfig()), "vocab_size": task.vocab_size,
                             "n_contexts": task.n_contexts, "seq_len": task.seq_len})
    cfg = cfg or TrainConfig()
    run = run or RunConfig()
    d = setup_distributed(run.device)
    threads = torch.get_num_threads()
    if run.threads and d.device.type == "cpu":
        torch.set_num_threads(run.threads)
    try:
        configs = {"task": task_id, "model": asdict(model_cfg), "train": asdict(cfg)}
        result = _train(task, configs, model_cfg, cfg, run, d, log if d.main else (lambda *a, **k: None), t_start)
        d.finish()                             # the ranks leave together, after rank 0's final evaluation
        return result
    finally:
        torch.set_num_threads(threads)
        if d.owns_group:
            dist.destroy_process_group()


def _train(task, configs, model_cfg, cfg, run, d, log, t_start):
    if cfg.ref_init == "fit" and task.ref_policy is None:
        raise ValueError("ref_init='fit' needs an enumerable task with a tabular ref_policy; use ref_init='init'")
    if cfg.n_pairs and not task.enumerable:
        raise ValueError("n_pairs > 0 (a fixed data set) is supported only for enumerable tasks; use n_pairs=0")
    # Per-rank seeds for the process-global generators (dropout); the data generators are shared by all ranks.
    torch.manual_seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    random.seed(cfg.seed + d.rank)

    model = make_model(model_cfg, seed=cfg.seed).to(d.device)
    ref = fit_reference(model, task, steps=cfg.ref_steps if cfg.ref_init == "fit" else 0, lr=cfg.ref_lr,
                        device=d.device)
    d.broadcast(ref)                           # the same seed gives the same π_ref on every rank; made certain
    model.load_state_dict(ref.state_dict())    # π_θ starts at π_ref, as after SFT
    model.train()
    frozen = _frozen(copy.deepcopy(model))     # the sampler copy of π_θ for the online KL samples
    ref_policy = enumerate_policy(ref, task, device=d.device) if task.enumerable else None
    data = PreferenceData(task, cfg.sampler, SequenceSampler(ref, task, d.device), n_pairs=cfg.n_pairs,
                          seed=cfg.seed + 1)
    online_gen = torch.Generator().manual_seed(cfg.seed + 2)
    target, target_kind = None, "none (not enumerable)"
    if d.main and task.enumerable:
        target, target_kind = exact_solution(task, cfg, ref_policy, data.pair_data())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                            fused=True)
    start = _restore(run.checkpoint, configs, d, model, opt, frozen, data.gen, online_gen) if run.resume else 0
    if start:
        log(f"resumed from {run.checkpoint} at step {start}")

    use_cuda = d.device.type == "cuda"
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_cuda and run.amp
                else contextlib.nullcontext())
    model_fwd = torch.compile(model, dynamic=True) if (run.compile and use_cuda) else model
    if run.compile and not use_cuda:
        log("note: --compile applies on CUDA only; running eagerly on CPU")
    log(f"transformer: V={task.vocab_size} L={task.seq_len} m={task.n_contexts} ({task.n_sequences} sequences), "
        f"{model.n_params()} parameters, loss={cfg.loss} alpha={cfg.alpha:g} beta={cfg.beta:g}, "
        f"device={d.device.type} world={d.world}, exact reference: {target_kind}")

    stop = cfg.steps if run.stop_after is None else min(cfg.steps, run.stop_after)
    needs_kl = bool(LOSS_TERMS[cfg.loss].kl_weight(cfg))
    history, tokens, t_loop, t_aside, sampler = [], 0, time.perf_counter(), 0.0, None
    for step in range(start, stop):
        if step % cfg.kl_refresh == 0:         # online samples come from a copy of π_θ refreshed every T steps
            frozen.load_state_dict(model.state_dict())
            sampler = None
        if needs_kl and sampler is None:
            sampler = SequenceSampler(frozen, task, d.device)
        pairs = data.batch(cfg.batch_size, d)
        online = draw_online(task, sampler, online_gen, cfg.kl_samples, d) if needs_kl else None
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss, stats, n_tokens = step_loss(model_fwd, ref, task, cfg, d, pairs, online, autocast, run.dedup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        d.sum_grads(model)
        opt.step()
        tokens += n_tokens * d.world
        done = step + 1
        t_before = time.perf_counter()         # logging and checkpoints are timed apart from the steps
        if run.log_interval and (done % run.log_interval == 0 or done == stop):
            # Each rank holds its share of the loss; the global value is their sum (a collective: all ranks).
            shares = d.all_sum(torch.stack([loss.detach(), stats.get("kl_est", torch.zeros((), device=d.device))]))
            if d.main:
                row = _log_row(model, task, cfg, ref_policy, target, d, done, shares.tolist(), tokens,
                               t_before - t_loop - t_aside, start, stop)
                history.append(row)
                log(_format_row(row, cfg.steps))
        if run.checkpoint and (done % run.checkpoint_interval == 0 or done == stop):
            _save(run.checkpoint, d, done, model, opt, frozen, data.gen, online_gen, configs)
        t_aside += time.perf_counter() - t_before
    loop_s = max(time.perf_counter() - t_loop - t_aside, 1e-9)

    if not d.main:
        return None
    model.eval()
    final = _final_metrics(model, ref, frozen, task, cfg, run, ref_policy, target, d)
    final.update({"step": stop, "steps": cfg.steps, "wall_s": time.perf_counter() - t_start,
                  "step_s": loop_s / max(stop - start, 1), "tokens_per_s": tokens / loop_s,
                  "pairs_per_s": (stop - start) * cfg.batch_size / loop_s, "n_params": model.n_params(),
                  "device": d.device.type, "world_size": d.world, "exact_reference": target_kind,
                  "config": configs})
    policy = enumerate_policy(model, task, device=d.device) if task.enumerable else None
    return TrainResult(final, policy, ref_policy, history)


def _save(path, d, done, model, opt, frozen, pair_gen, online_gen, configs):
    rngs = [rng_state(d.device)]
    if d.world > 1:                            # every rank's own generators (per-rank seeds)
        rngs = [None] * d.world
        dist.all_gather_object(rngs, rng_state(d.device))
    if d.main:
        save_checkpoint(path, {"version": CHECKPOINT_VERSION, "step": done, "model": model.state_dict(),
                               "optimizer": opt.state_dict(), "frozen": frozen.state_dict(),
                               "pair_gen": pair_gen.get_state(), "online_gen": online_gen.get_state(),
                               "rng": rngs, "configs": configs, "world_size": d.world})


def _restore(path, configs, d, model, opt, frozen, pair_gen, online_gen) -> int:
    """Load a checkpoint written with the same configs into the run's objects; returns the step to continue from."""
    state = load_checkpoint(path)
    if state["configs"] != configs:
        diff = [f"{k}.{f}" for k in configs for f in configs[k] if state["configs"].get(k, {}).get(f) != configs[k][f]]
        raise CheckpointError(f"checkpoint {path} was written with another configuration "
                              f"(differs in {', '.join(diff)})")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    frozen.load_state_dict(state["frozen"])
    pair_gen.set_state(state["pair_gen"])
    online_gen.set_state(state["online_gen"])
    if d.rank < len(state["rng"]):             # a rank the writer did not have keeps its fresh per-rank seed
        set_rng_state(state["rng"][d.rank], d.device)
    return state["step"]


# --------------------------------------------------------------------------- evaluation

def _log_row(model, task, cfg, ref_policy, target, d, done, shares, tokens, elapsed, start, stop) -> dict:
    loss, kl_est = shares
    row = {"step": done, "loss": loss, "kl_tokenwise": kl_est, "tokens_per_s": tokens / max(elapsed, 1e-9),
           "eta_s": elapsed / max(done - start, 1) * (stop - done)}
    if task.enumerable:                        # exact TV and KL by enumeration
        model.eval()
        policy = enumerate_policy(model, task, device=d.device)
        model.train()
        m = exact_metrics(policy, ref_policy, task, alpha=cfg.alpha, exact_solution=target)
        row["tv"] = m.get("tv_exact", m["tv_target"])
        row["kl"] = m["kl_ref"]
    return row


def _format_row(row: dict, steps: int) -> str:
    tv = f"{row['tv']:.4f}" if "tv" in row else "n/a"
    kl = f"{row['kl']:.4f}" if "kl" in row else f"~{row['kl_tokenwise']:.4f}"
    return (f"step {row['step']:>6d}/{steps}  loss {row['loss']:.5f}  tv {tv}  kl {kl}  "
            f"tok/s {row['tokens_per_s']:.3g}  eta {row['eta_s']:.0f}s")


def _final_metrics(model, ref, frozen, task, cfg, run, ref_policy, target, d) -> dict:
    """Monte Carlo KL estimators on fresh samples, plus, when enumerable, the exact metrics and estimator biases."""
    out = {}
    online = draw_online(task, SequenceSampler(model, task, d.device),
                         torch.Generator().manual_seed(cfg.seed + 3), run.eval_samples, Dist())
    ctx, seqs = (t.to(d.device) for t in online)
    with torch.no_grad():
        tokens = model_inputs(ctx, seqs, task.vocab_size)
        est = kl_estimates(torch.log_softmax(model(tokens).float(), -1), torch.log_softmax(ref(tokens).float(), -1),
                           seqs)
    for name, values in est.items():
        out[f"kl_{name}_mc"], out[f"kl_{name}_se"] = mean_and_se(values)
    if not task.enumerable:
        return out
    out.update(exact_metrics(enumerate_policy(model, task, device=d.device), ref_policy, task, alpha=cfg.alpha,
                             exact_solution=target))
    m, V, L = task.n_contexts, task.vocab_size, task.seq_len
    with torch.no_grad():
        logq, prefixes = enumerate_logq(model, m, V, L, device=d.device)
        logq_ref, _ = enumerate_logq(ref, m, V, L, device=d.device)
        logq_frozen, _ = enumerate_logq(frozen, m, V, L, device=d.device)
        expected = tokenwise_expectation(logq, logq_ref, logq_frozen, prefixes).double().cpu().numpy()
    # The token-wise estimator's mean under the (up to T steps stale) sampler copy, against the exact KL.
    out["kl_tokenwise_expected"] = float(np.dot(task.context_probs, expected))
    out["kl_tokenwise_bias"] = out["kl_tokenwise_expected"] - out["kl_ref"]
    bias = kl_gradient_bias(model, ref, task, device=d.device)
    out["kl_grad_bias_tokenwise"], out["kl_grad_bias_chain"] = bias["tokenwise"], bias["chain"]
    if cfg.ref_init == "fit":
        out["ref_fit_tv"] = float(np.max(0.5 * np.abs(ref_policy - task.ref_policy).sum(1)))
    return out
