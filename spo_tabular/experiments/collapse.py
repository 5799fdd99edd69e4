"""`collapse`: the IPO paper's toy learning curves (Azar et al. 2023, §5; SPEC §9) with SPO added.

On D1 (a ≻ b ≻ c), D2 (a cycle) and D3 (a ≻ b, b ≻ a, c unseen), train logits θ ∈ R³ from the
uniform π_ref with Adam (lr 0.01), minibatches of 9 pairs drawn uniformly with replacement, 18,000
steps, 10 independent runs — vectorised: the runs are one (runs, contexts, actions) tensor and
Adam is elementwise, so each run is exactly an independent Adam run. Unanimous pairs give DPO no
finite minimiser (SPEC §6), so it drifts to a deterministic policy; IPO and SPO with β > 0 stay
finite. The DataFrame holds the learning curves (one row per dataset, method, run, step, action).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from ..preferences import ipo_toy_dataset
from ..solvers.sgd import make_pair_loss
from ._common import mean_interval
from .sweep import run_sweep

NAME = "collapse"

# method label -> (loss, hyperparameters); β is DPO's own β for dpo and the global KL weight for spo.
METHODS = {
    **{f"dpo(beta={b:g})": ("dpo", {"beta": b}) for b in (0.1, 0.5, 1.0)},
    **{f"ipo(tau={t:g})": ("ipo", {"tau": t}) for t in (0.1, 0.5, 1.0)},
    **{f"spo(alpha=1,beta={b:g})": ("spo", {"alpha": 1.0, "beta": b}) for b in (0.1, 0.5, 1.0)},
}


@dataclass(frozen=True)
class CollapseSettings:
    datasets: tuple = ("D1", "D2", "D3")
    methods: tuple = tuple(METHODS)
    n_runs: int = 10            # the paper's 10 seeds, trained together
    steps: int = 18_000
    batch_size: int = 9
    lr: float = 0.01
    record_every: int = 200     # learning-curve resolution (steps)


FULL = CollapseSettings()
QUICK = CollapseSettings(methods=("dpo(beta=0.1)", "ipo(tau=0.1)", "spo(alpha=1,beta=0.1)"), n_runs=3,
                         steps=300, record_every=50)


def train_runs(problem, data, *, loss: str, params: dict, n_runs: int, steps: int, batch_size: int,
               lr: float, record_every: int, seed: int):
    """Adam on n_runs independent logit tables from log π_ref, minibatches drawn with replacement.

    Returns (recorded steps (T,), probabilities (T, n_runs, n_contexts, n_actions)). The loss is the
    batch mean of LOSSES[loss] plus, for SPO, β Σ_x ρ_x KL(π‖π_ref) computed exactly.
    """
    per_pair, kl_weight = make_pair_loss(loss, **params)
    m, n = problem.n_contexts, problem.n_actions
    generator = torch.Generator().manual_seed(int(seed) % 2**63)
    pair_c = torch.as_tensor(data.ctx * n + data.chosen)            # flat indices into (m·n,)
    pair_r = torch.as_tensor(data.ctx * n + data.rejected)
    log_ref = torch.as_tensor(np.array(problem.log_ref))            # (m, n)
    log_ref_flat = log_ref.reshape(-1)
    rho = torch.as_tensor(np.array(problem.context_probs))
    z = log_ref.expand(n_runs, m, n).clone().requires_grad_(True)   # (R, m, n)
    opt = torch.optim.Adam([z], lr=lr)
    recorded, probs = [], []

    def record(step):
        recorded.append(step)
        probs.append(torch.softmax(z.detach(), dim=-1).numpy().copy())

    record(0)
    for step in range(1, steps + 1):
        k = torch.randint(len(data), (n_runs, batch_size), generator=generator)
        c, r = pair_c[k], pair_r[k]                                  # (R, B)
        logp = torch.log_softmax(z, dim=-1)
        flat = logp.reshape(n_runs, m * n)
        value = per_pair(flat.gather(1, c), flat.gather(1, r), log_ref_flat[c], log_ref_flat[r]).mean(dim=1).sum()
        if kl_weight:
            kl = (logp.exp() * (logp - log_ref)).sum(dim=-1)         # (R, m)
            value = value + kl_weight * (kl * rho).sum()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if step % record_every == 0 or step == steps:
            record(step)
    return np.asarray(recorded), np.stack(probs)


def configs(settings: CollapseSettings) -> list[dict]:
    """One configuration per (dataset, method); the training protocol rides along."""
    fixed = {k: x for k, x in asdict(settings).items() if k not in ("datasets", "methods")}
    return [{"dataset": d, "method": meth, **fixed} for d in settings.datasets for meth in settings.methods]


def task(config: dict, seed: int) -> pd.DataFrame:
    """Learning curves of one method on one toy data set: rows (run, step, action, probability, ...)."""
    if config["method"] not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {config['method']!r}")
    loss, params = METHODS[config["method"]]
    problem, data = ipo_toy_dataset(config["dataset"])
    steps, probs = train_runs(problem, data, loss=loss, params=params, n_runs=config["n_runs"],
                              steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                              record_every=config["record_every"], seed=seed)
    p = probs[:, :, 0, :]                                             # (T, R, n): one context
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)       # (T, R)
    T, R, n = p.shape
    return pd.DataFrame({
        "loss": loss,
        "param": config["method"][len(loss):].strip("()"),
        "alpha": params.get("alpha", np.nan), "beta": params.get("beta", np.nan), "tau": params.get("tau", np.nan),
        "run": np.tile(np.repeat(np.arange(R), n), T),
        "step": np.repeat(steps, R * n),
        "action": np.tile(np.array(list("abc"[:n]) if n == 3 else np.arange(n).astype(str)), T * R),
        "probability": p.reshape(-1),
        "entropy": np.repeat(ent.reshape(-1), n),
        "max_prob": np.repeat(p.max(axis=-1).reshape(-1), n),
    })


def run(quick: bool = False, settings: CollapseSettings | None = None, **sweep):
    """The learning-curve DataFrame (columns in docs/finite-data.md); one sweep seed, n_runs runs per task."""
    settings = settings or (QUICK if quick else FULL)
    sweep.setdefault("n_seeds", 1)
    return run_sweep(task, configs(settings), experiment=NAME, **sweep)


def learning_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval over runs of π(action) per (dataset, method, step, action): what the figure plots."""
    rows = []
    for key, g in df.groupby(["dataset", "method", "loss", "param", "step", "action"], sort=True):
        mean, low, high = mean_interval(g["probability"])
        rows.append((*key, mean, low, high))
    return pd.DataFrame(rows, columns=["dataset", "method", "loss", "param", "step", "action",
                                       "mean", "low", "high"])


def summarize(df: pd.DataFrame) -> dict:
    """Final-step entropy and max probability (mean and 95% interval over runs) and mean π per action."""
    final = df[df["step"] == df.groupby(["dataset", "method"])["step"].transform("max")]
    out = {}
    for (dataset, method), g in final.groupby(["dataset", "method"], sort=True):
        per_run = g.drop_duplicates("run")
        out.setdefault(dataset, {})[method] = {
            "final_step": int(g["step"].iloc[0]),
            "entropy": dict(zip(("mean", "low", "high"), mean_interval(per_run["entropy"]))),
            "max_prob": dict(zip(("mean", "low", "high"), mean_interval(per_run["max_prob"]))),
            "policy": {a: float(h["probability"].mean()) for a, h in g.groupby("action")},
        }
    return {"final": out, "max_entropy": float(np.log(3))}
