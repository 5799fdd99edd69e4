"""A small nanoGPT-style causal transformer over response tokens, one prompt token per context.

Input row: (prompt token V + x, y_1, ..., y_{L-1}); output position t holds the logits of
π(y_{t+1} | x, y_≤t) over the V response tokens, so one forward pass scores a whole response (SPEC §8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validation as v


@dataclass(frozen=True)
class GPTConfig:
    """Model shape; the defaults give about 340k parameters for V = 4, L = 3."""

    vocab_size: int = 4      # V, response tokens (the output head predicts only these)
    n_contexts: int = 1      # m, one prompt token per context (embedded after the V response tokens)
    seq_len: int = 3         # L, response length = number of positions the model reads
    n_layer: int = 3         # transformer blocks
    n_head: int = 4          # attention heads per block
    n_embd: int = 96         # residual width; must be divisible by n_head
    dropout: float = 0.0     # dropout probability; 0 keeps the model deterministic for the exact comparisons
    bias: bool = True        # biases in Linear and LayerNorm layers, as in GPT-2 (--no-bias drops them)

    def __post_init__(self):
        for name in ("vocab_size", "n_contexts", "seq_len", "n_layer", "n_head", "n_embd"):
            v.positive_int(name, getattr(self, name), minimum=2 if name == "vocab_size" else 1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}")
        d = v.nonnegative_float("dropout", self.dropout)
        if d >= 1:
            raise ValueError(f"dropout must lie in [0, 1), got {d}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.dropout = cfg.n_head, cfg.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, val = self.c_attn(x).split(C, dim=2)
        q, k, val = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, val))
        y = F.scaled_dot_product_attention(q, k, val, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Causal transformer: tokens (B, T ≤ L) -> next-response-token logits (B, T, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size + cfg.n_contexts, cfg.n_embd)   # response tokens, then prompts
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):   # GPT-2: residual projections scaled by 1/sqrt(2 n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of π(y_{t+1} | x, y_≤t) for input rows (prompt, y_1, ..., y_{T-1}) of shape (B, T)."""
        T = tokens.shape[1]
        pos = torch.arange(T, device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_model(cfg: GPTConfig, *, seed: int) -> GPT:
    """A GPT initialised from `seed` without touching the global torch RNG (fork_rng restores it)."""
    seed = v.positive_int("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(cfg)
