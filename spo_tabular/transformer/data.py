"""Preference data and online samples for the sequence mode, drawn from generators shared by every rank.

Pairs: x ~ ρ, shown y, y' from π_ref ("ref") or uniform over the V^L sequences ("uniform"), labelled
y ≻ y' with the Bradley–Terry probability σ(r(x, y) − r(x, y')); pairs with y = y' are dropped, which
is exactly the tabular samplers' conditioning on i ≠ j (SPEC §3). Each step draws the global batch's
uniforms once; a rank turns only its shard of them into sequences.
"""
from __future__ import annotations

import numpy as np
import torch

from ..preferences import PairData
from .distributed import Dist
from .exact import enumerate_policy, sample_sequences
from .task import SequenceTask, enumerate_sequences, sequence_index

PAIR_SAMPLERS = ("ref", "uniform")


class SequenceSampler:
    """y ~ π(·|x) from given uniforms: inverse CDF on the enumerated table when enumerable, else autoregressive."""

    def __init__(self, model, task: SequenceTask, device):
        self.model, self.task, self.device = model, task, device
        self.cdf = None
        if task.enumerable:
            self.cdf = torch.as_tensor(np.cumsum(enumerate_policy(model, task, device=device), axis=1))  # (m, V^L)
            self.seqs = torch.as_tensor(enumerate_sequences(task.vocab_size, task.seq_len))

    def __call__(self, ctx: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Sequences (N, L) on the CPU for ctx (N,) and uniforms (N, L) in [0, 1)."""
        if self.cdf is not None:
            cdf = self.cdf[ctx]
            idx = torch.searchsorted(cdf, (uniforms[:, :1].double() * cdf[:, -1:]).contiguous(), right=True)[:, 0]
            return self.seqs[idx.clamp_(max=self.cdf.shape[1] - 1)]
        return sample_sequences(self.model, ctx.to(self.device), uniforms.to(self.device),
                                self.task.vocab_size).cpu()


def draw_contexts(u: torch.Tensor, context_probs: np.ndarray) -> torch.Tensor:
    """x ~ ρ by inverse CDF of the uniforms u (N,): int64 (N,)."""
    cdf = torch.as_tensor(np.cumsum(context_probs))
    return torch.searchsorted(cdf, (u.double() * cdf[-1])[:, None], right=True)[:, 0].clamp_(max=len(context_probs) - 1)


def draw_pairs(task: SequenceTask, sampler: str, ref_sampler, gen: torch.Generator, n: int, d: Dist | None = None):
    """n labelled comparisons (or this rank's shard): CPU ctx (k,), chosen (k, L), rejected (k, L), valid (k,).

    valid is False where y = y' (a tie carries no preference and is dropped, as in the tabular samplers).
    """
    L, V = task.seq_len, task.vocab_size
    u = torch.rand(n, 2 * L + 2, generator=gen, dtype=torch.float64)     # the global batch's randomness
    if d is not None:
        u = d.shard(u)
    ctx = draw_contexts(u[:, 0], task.context_probs)
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


class PreferenceData:
    """Per-step batches of pairs: fresh draws every step (n_pairs = 0) or minibatches of one fixed data set."""

    def __init__(self, task: SequenceTask, sampler: str, ref_sampler, *, n_pairs: int, seed: int):
        self.task, self.sampler, self.ref_sampler = task, sampler, ref_sampler
        self.gen = torch.Generator().manual_seed(seed)
        self.fixed = None
        if n_pairs:
            ctx, chosen, rejected, valid = draw_pairs(task, sampler, ref_sampler,
                                                      torch.Generator().manual_seed(seed + 1_000_003), n_pairs)
            self.fixed = (ctx[valid], chosen[valid], rejected[valid])

    def pair_data(self) -> PairData | None:
        """The fixed data set as tabular PairData (actions = lexicographic sequence indices), or None for a stream."""
        if self.fixed is None:
            return None
        ctx, chosen, rejected = self.fixed
        V, task = self.task.vocab_size, self.task
        return PairData(ctx.numpy(), sequence_index(chosen.numpy(), V), sequence_index(rejected.numpy(), V),
                        task.n_contexts, task.n_sequences)

    def batch(self, n: int, d: Dist):
        """This rank's shard of the next global batch of n pairs: (ctx, chosen, rejected, valid)."""
        if self.fixed is None:
            return draw_pairs(self.task, self.sampler, self.ref_sampler, self.gen, n, d)
        idx = d.shard(torch.randint(self.fixed[0].shape[0], (n,), generator=self.gen))   # with replacement
        return (*(t[idx] for t in self.fixed), torch.ones(idx.shape[0], dtype=torch.bool))


def draw_online(task: SequenceTask, sampler: SequenceSampler, gen: torch.Generator, n: int, d: Dist):
    """This rank's shard of n online samples x ~ ρ, y ~ sampler (the frozen copy of π_θ): ctx (k,), seqs (k, L)."""
    u = d.shard(torch.rand(n, task.seq_len + 1, generator=gen, dtype=torch.float64))
    ctx = draw_contexts(u[:, 0], task.context_probs)
    return ctx, sampler(ctx, u[:, 1:])
