"""Sequence log-probabilities, KL estimators, and exact evaluation by enumeration (SPEC §8).

Enumeration feeds only the m·V^(L-1) prefixes of length L-1: causal attention gives every
per-prefix next-token distribution in that one pass, and the last position's full V-vector
completes all V^L sequences (a factor V fewer rows than feeding every sequence).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import log_softmax as np_log_softmax

from .. import metrics
from .task import ENUM_LIMIT, SequenceTask, enumerate_sequences


# --------------------------------------------------------------------------- scoring

def model_inputs(ctx: torch.Tensor, seqs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Input rows (V + x, y_1, ..., y_{T-1}) for ctx (N,) and seqs (N, T): (N, T); the last token is never read."""
    return torch.cat([(ctx + vocab_size).to(seqs.dtype)[:, None], seqs[:, :-1]], dim=1)


def token_logprobs(model, tokens: torch.Tensor) -> torch.Tensor:
    """log π(· | x, y_<t) at every position, float32 (N, L, V): the log_softmax runs in float32 under autocast too."""
    return torch.log_softmax(model(tokens).float(), dim=-1)


def sequence_logp(logq: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) from logq (N, L, V) and seqs (N, L): (N,)."""
    return logq.gather(-1, seqs[..., None]).squeeze(-1).sum(-1)


def prefix_kl(logq: torch.Tensor, logq_ref: torch.Tensor) -> torch.Tensor:
    """KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) over the full vocabulary at every position: (..., L)."""
    return (logq.exp() * (logq - logq_ref)).sum(-1)


def kl_estimates(logq: torch.Tensor, logq_ref: torch.Tensor, seqs: torch.Tensor) -> dict:
    """Per-sample KL estimates, y ~ π: token-wise Σ_t KL_t, k1 = log π/π_ref, k3 = r − 1 − log r (r = π_ref/π)."""
    k1 = sequence_logp(logq, seqs) - sequence_logp(logq_ref, seqs)
    return {"tokenwise": prefix_kl(logq, logq_ref).sum(-1), "k1": k1, "k3": torch.expm1(-k1) + k1}


def mean_and_se(x: torch.Tensor) -> tuple[float, float]:
    """Sample mean and its standard error std/√N (float64)."""
    x = x.detach().double().cpu()
    n = x.numel()
    return float(x.mean()), float(x.std(unbiased=True) / n ** 0.5) if n > 1 else float("nan")


# --------------------------------------------------------------------------- sampling

def sample_sequences(model, ctx: torch.Tensor, uniforms: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Autoregressive draw y ~ π(·|x) by inverse CDF of the given uniforms (N, L): seqs (N, L) int64."""
    N, L = uniforms.shape
    seqs = torch.zeros(N, L, dtype=torch.long, device=uniforms.device)
    with torch.no_grad():
        for t in range(L):
            logits = model(model_inputs(ctx, seqs[:, : t + 1], vocab_size))[:, t]
            cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
            # right=True: token k is drawn with probability cdf_k − cdf_{k−1} exactly.
            u = (uniforms[:, t].to(cdf.dtype) * cdf[:, -1])[:, None].contiguous()
            draw = torch.searchsorted(cdf, u, right=True)
            seqs[:, t] = draw[:, 0].clamp_(max=vocab_size - 1)
    return seqs


# --------------------------------------------------------------------------- enumeration

def prefix_rows(n_contexts: int, vocab_size: int, seq_len: int):
    """ctx (m·V^(L-1),) and every prefix of length L-1 per context, lexicographic, as int64 tensors."""
    if seq_len > 1:
        prefixes = torch.as_tensor(enumerate_sequences(vocab_size, seq_len - 1))
    else:
        prefixes = torch.zeros(1, 0, dtype=torch.long)       # L = 1: one empty prefix
    k = prefixes.shape[0]
    ctx = torch.arange(n_contexts).repeat_interleave(k)
    return ctx, prefixes.repeat(n_contexts, 1)


def enumerate_logq(model, n_contexts: int, vocab_size: int, seq_len: int, *, device="cpu",
                   chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probs at every prefix row: logq (m, V^(L-1), L, V) float32, prefixes (V^(L-1), L-1).

    Gradients flow when called with grad enabled; chunk bounds the rows per forward pass.
    """
    ctx, prefixes = prefix_rows(n_contexts, vocab_size, seq_len)
    ctx, prefixes = ctx.to(device), prefixes.to(device)
    tokens = torch.cat([(ctx + vocab_size)[:, None], prefixes], dim=1)      # (rows, L)
    logq = torch.cat([token_logprobs(model, tokens[i:i + chunk]) for i in range(0, tokens.shape[0], chunk)])
    k = prefixes.shape[0] // n_contexts
    return logq.view(n_contexts, k, seq_len, vocab_size), prefixes[:k]


def log_policy_from_logq(logq: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
    """log π(y|x) for all V^L sequences in lexicographic order from enumerate_logq: (m, V^L)."""
    m, k, L, V = logq.shape
    if L > 1:
        head = logq[:, :, : L - 1].gather(-1, prefixes[None, :, :, None].expand(m, k, L - 1, 1)).squeeze(-1).sum(-1)
    else:
        head = torch.zeros(m, k, dtype=logq.dtype, device=logq.device)
    return (head[:, :, None] + logq[:, :, L - 1]).reshape(m, k * V)    # prefix-major, last token minor


def enumerate_policy(model, task: SequenceTask, *, device="cpu") -> np.ndarray:
    """The model's exact distribution over all V^L sequences, float64 (m, V^L), renormalised in float64."""
    _check_enumerable(task)
    with torch.no_grad():
        logq, prefixes = enumerate_logq(model, task.n_contexts, task.vocab_size, task.seq_len, device=device)
        logp = log_policy_from_logq(logq, prefixes).double().cpu().numpy()
    # float32 rounding leaves Σπ off 1 by ~1e-7; the tabular validators ask for 1e-9.
    return np.exp(np_log_softmax(logp, axis=1))


def _check_enumerable(task):
    if not task.enumerable:
        raise ValueError(f"exact evaluation enumerates V^L = {task.n_sequences} sequences; "
                         f"it needs V^L ≤ ENUM_LIMIT = {ENUM_LIMIT}")


def tokenwise_expectation(logq, logq_ref, logq_sampler, prefixes) -> torch.Tensor:
    """E_{y ~ sampler} Σ_t KL_t(θ ‖ ref)(x, y_<t) exactly, per context (m,): the token-wise estimator's mean."""
    m, k, L, V = logq.shape
    kl_rows = prefix_kl(logq, logq_ref).sum(-1)                               # (m, k) Σ_t KL_t per prefix row
    # Probability of each prefix row under the sampler; the last token is summed out (its KL_L needs only the prefix).
    w = log_policy_from_logq(logq_sampler, prefixes).view(m, k, V).logsumexp(-1).exp()
    return (w * kl_rows).sum(-1)


def kl_gradient_bias(model, ref_model, task: SequenceTask, *, device="cpu") -> dict:
    """Relative error ‖E ĝ − ∇KL‖/‖∇KL‖ of the token-wise KL gradient on fresh samples, by enumeration.

    'tokenwise' differentiates Σ_t KL_t only; 'chain' adds the score term Σ_t sg(Σ_{s>t} KL_s) ∇log π(y_t|y_<t),
    which the chain rule for KL(π_θ‖π_ref) = Σ_t E_{y_<t~π_θ} KL_t requires (SPEC §8).
    """
    _check_enumerable(task)
    params = [p for p in model.parameters() if p.requires_grad]
    rho = torch.tensor(task.context_probs, dtype=torch.float32, device=device)
    m, V, L = task.n_contexts, task.vocab_size, task.seq_len
    with torch.no_grad():
        logq_ref, prefixes = enumerate_logq(ref_model, m, V, L, device=device)
    logq, _ = enumerate_logq(model, m, V, L, device=device)
    logp = log_policy_from_logq(logq, prefixes)                              # (m, V^L)
    logp_ref = log_policy_from_logq(logq_ref, prefixes)
    exact = (rho * (logp.exp() * (logp - logp_ref)).sum(-1)).sum()
    k = prefixes.shape[0]
    w = logp.detach().view(m, k, V).logsumexp(-1).exp()                      # π(prefix), a constant
    kl_t = prefix_kl(logq, logq_ref)                                         # (m, k, L)
    tokenwise = (rho * (w * kl_t.sum(-1)).sum(-1)).sum()
    to_go = kl_t.detach().flip(-1).cumsum(-1).flip(-1) - kl_t.detach()       # Σ_{s>t} KL_s
    if L > 1:
        logpi = logq[:, :, : L - 1].gather(-1, prefixes[None, :, :, None].expand(m, k, L - 1, 1)).squeeze(-1)
        score = (rho * (w * (to_go[:, :, : L - 1] * logpi).sum(-1)).sum(-1)).sum()
    else:
        score = torch.zeros((), device=logq.device)
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs]).double()
    g_exact = flat(torch.autograd.grad(exact, params, retain_graph=True))
    g_tok = flat(torch.autograd.grad(tokenwise, params, retain_graph=True))
    g_chain = flat(torch.autograd.grad(tokenwise + score, params))
    norm = g_exact.norm().clamp_min(torch.finfo(torch.float64).tiny)
    return {"tokenwise": float((g_tok - g_exact).norm() / norm), "chain": float((g_chain - g_exact).norm() / norm),
            "grad_norm": float(g_exact.norm())}


def exact_metrics(policy: np.ndarray, ref_policy: np.ndarray, task: SequenceTask, *, alpha: float,
                  exact_solution: np.ndarray | None = None) -> dict:
    """TV to softmax(r/α) (and to the exact minimiser if given), KL to π_ref, entropy, win rate, E[r]: a dict."""
    problem = task.problem(ref_policy)
    rho = problem.context_probs
    tv_target = metrics.tv(policy, problem.target(alpha))
    out = {
        "tv_target": metrics.weighted_mean(tv_target, rho),
        "tv_target_max": float(tv_target.max()),
        "kl_ref": metrics.weighted_mean(metrics.kl(policy, ref_policy), rho),
        "entropy": metrics.weighted_mean(metrics.entropy(policy), rho),
        "win_rate": metrics.win_rate(problem, policy, ref_policy),
        "expected_reward": metrics.weighted_mean(metrics.expected_reward(problem.rewards, policy), rho),
    }
    if exact_solution is not None:
        tv_exact = metrics.tv(policy, exact_solution)
        out["tv_exact"] = metrics.weighted_mean(tv_exact, rho)
        out["tv_exact_max"] = float(tv_exact.max())
    return out
