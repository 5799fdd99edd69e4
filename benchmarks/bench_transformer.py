"""Sequence-mode throughput on whichever device is present: training steps and exact enumeration.

Training: `train()` on the default task (V=4, L=3, β=0.5, so the KL samples run too) and on a
non-enumerable one (V=16, L=5: 2^20 sequences, autoregressive sampling), each with row
deduplication (ours) and without (baseline: every pair and KL row through the model); reports step
time, tokens/s through the policy forward, pairs/s and peak memory, after an untimed run of each (2
steps on a CPU, 30 on a GPU, where the first steps of each new batch shape cost seconds in all and made
whichever side ran first look 2-3x slower).
Enumeration: exact log-probs of all V^L sequences (V=16, L=2..5, i.e. 2^8..2^20) with the default-size
model, by the prefix pass (ours: m·V^(L-1) rows) against scoring every sequence (baseline: m·V^L rows).
One run prints both times and the ratio; `--quick` shrinks it for CI; `--out PATH` writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from spo_tabular.report import format_table
from spo_tabular.transformer import GPTConfig, TaskConfig, make_model
from spo_tabular.transformer.exact import (enumerate_logq, log_policy_from_logq, model_inputs, sequence_logp,
                                           token_logprobs)
from spo_tabular.transformer.task import enumerate_sequences
from spo_tabular.transformer.train import RunConfig, TrainConfig, train


MEM = "peak MB"


def peak_memory_mb(device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10     # Linux reports KB


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(device, quick, threads) -> list[dict]:
    """(case, steps for ours, steps for the baseline): the step time is steady, so the slow baseline runs fewer."""
    big = 3 if quick else (30 if device.type == "cuda" else 10)     # autoregressive sampling: ~2 s a step on a CPU
    cases = [("V=4 L=3 (64 seqs, enumerable)", TaskConfig(),
              TrainConfig(beta=0.5, steps=30 if quick else 300, ref_steps=20), 5 if quick else 30),
             ("V=16 L=5 (2^20 seqs, sampled)", TaskConfig(vocab_size=16, seq_len=5),
              TrainConfig(beta=0.5, steps=big, ref_init="init", batch_size=256 if quick else 1024,
                          kl_samples=256 if quick else 1024), big)]
    rows = []
    for name, task_cfg, cfg, base_steps in cases:
        result = {}
        # Warm-up, untimed: on a GPU every new batch shape pays for kernel and library plan selection
        # once (deduplicated batches vary in size), which would otherwise dominate a short timed run.
        warm_steps = 30 if device.type == "cuda" else 2
        for dedup in (True, False):
            warm = TrainConfig(**{**cfg.__dict__, "steps": warm_steps, "warmup": 1})
            train(task_cfg, GPTConfig(), warm, RunConfig(device=device.type, log_interval=0, eval_samples=16,
                                                         dedup=dedup, threads=threads), log=lambda *a: None)
        for dedup in (True, False):
            reset_peak(device)
            run = RunConfig(device=device.type, log_interval=0, eval_samples=256, dedup=dedup, threads=threads)
            steps = cfg.steps if dedup else base_steps
            cfg_run = TrainConfig(**{**cfg.__dict__, "steps": steps, "warmup": min(cfg.warmup, steps - 1)})
            m = train(task_cfg, GPTConfig(), cfg_run, run, log=lambda *a: None).metrics
            result[dedup] = m
            result[f"mem{dedup}"] = peak_memory_mb(device)
        ours, base = result[True], result[False]
        rows.append({"case": name, "steps": f"{cfg.steps}/{base_steps}", "params": ours["n_params"],
                     "step ms (dedup)": 1e3 * ours["step_s"], "step ms (no dedup)": 1e3 * base["step_s"],
                     "ratio": base["step_s"] / ours["step_s"],
                     "tokens/s (dedup)": ours["tokens_per_s"], "tokens/s (no dedup)": base["tokens_per_s"],
                     "pairs/s (dedup)": ours["pairs_per_s"], MEM: max(result["memTrue"], result["memFalse"])})
    return rows


def enumerate_prefix(model, V, L, device):
    with torch.no_grad():
        logq, prefixes = enumerate_logq(model, 1, V, L, device=device, chunk=16384)
        return log_policy_from_logq(logq, prefixes)


def enumerate_naive(model, V, L, device, chunk=16384):
    seqs = torch.as_tensor(enumerate_sequences(V, L), device=device)
    ctx = torch.zeros(seqs.shape[0], dtype=torch.long, device=device)
    out = []
    with torch.no_grad():
        for i in range(0, seqs.shape[0], chunk):
            s = seqs[i:i + chunk]
            out.append(sequence_logp(token_logprobs(model, model_inputs(ctx[i:i + chunk], s, V)), s))
    return torch.cat(out)


def timed(fn, device, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_enumeration(device, quick) -> list[dict]:
    V = 16
    rows = []
    for L in ((2, 3) if quick else (2, 3, 4, 5)):
        model = make_model(GPTConfig(vocab_size=V, n_contexts=1, seq_len=L), seed=0).to(device).eval()
        n = V ** L
        reset_peak(device)
        repeat = 3 if n <= 2 ** 12 else 1
        enumerate_prefix(model, V, 2, device)                     # warm-up (kernels, allocator)
        t_ours, logp = timed(lambda: enumerate_prefix(model, V, L, device), device, repeat)
        mem = peak_memory_mb(device)
        row = {"V^L": f"2^{n.bit_length() - 1}", "V": V, "L": L, "prefix pass s": t_ours,
               "sequences/s": n / t_ours, MEM: mem}
        # Scoring all 2^20 sequences one by one is minutes on a CPU: the baseline stops at 2^16 there.
        if device.type == "cuda" or n <= 2 ** 16:
            t_base, logp_base = timed(lambda: enumerate_naive(model, V, L, device), device, repeat)
            row.update({"score-all s": t_base, "ratio": t_base / t_ours,
                        "max |Δ log p|": float((logp.reshape(-1) - logp_base).abs().max())})
        else:
            row.update({"score-all s": "skipped (CPU)", "ratio": "", "max |Δ log p|": ""})
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small sizes and few steps (CI smoke test)")
    p.add_argument("--out", default=None, help="write the rows as JSON to this path")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads (0 = torch's default); these small models run fastest on 1")
    args = p.parse_args(argv)
    global MEM
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    if not use_cuda and args.threads:
        torch.set_num_threads(args.threads)
    MEM = "peak CUDA MB" if use_cuda else "peak RSS MB"
    name = torch.cuda.get_device_name(device) if use_cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                               f"{torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}\n")
    t0 = time.perf_counter()
    training = bench_training(device, args.quick, args.threads)
    print("training steps (train(): ours = distinct rows only, baseline = every row)")
    print(format_table(training))
    enumeration = bench_enumeration(device, args.quick)
    print("\nexact enumeration of all V^L sequences (ours = prefix pass, baseline = score every sequence)")
    print(format_table(enumeration))
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "quick": args.quick, "total_s": total,
                       "training": training, "enumeration": enumeration}, f, indent=2)


if __name__ == "__main__":
    main()
