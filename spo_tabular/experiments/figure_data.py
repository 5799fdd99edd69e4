"""Data for the figures that no finite-data experiment produces, as tidy sweeps like the experiments.

The exact population floor of Theorem 1, softness (π and entropy against α and β on finite data,
with their closed forms), the exact KL–reward frontier of every method, and transformer learning
curves. Each `run_*` goes through run_sweep (provenance columns, resumable journal). Columns: docs/figures.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..metrics import entropy
from ..oracles import oracle_policy
from ..preferences import sample_pairs
from ..problems import make_problem
from ..solvers.batched import solve_exact_batched
from ..solvers.exact import solve_exact, solve_rlhf
from . import scaling
from ._common import policy_metrics, quietly
from .sweep import run_sweep


def _settings_config(settings, drop=("n_seeds",)) -> dict:
    """A settings dataclass as one JSON-ready configuration (tuples become lists)."""
    return {k: (list(x) if isinstance(x, tuple) else x) for k, x in asdict(settings).items() if k not in drop}


# --------------------------------------------------------------------------- Theorem 1: population floor

def floor_task(config: dict, seed: int) -> dict:
    """max TV between the exact population minimiser (β = 0) and softmax(r/α) on the scaling problem."""
    problem = make_problem(config["n_contexts"], config["n_actions"], seed=config["problem_seed"],
                           reward_scale=config["reward_scale"])
    res = quietly(solve_exact, problem, alpha=config["alpha"])
    return {"status": res.status, "grad_norm": res.grad_norm,
            **policy_metrics(problem, res.policy, target=problem.target(config["alpha"]))}


def run_population_floor(quick: bool = False, settings: scaling.ScalingSettings | None = None, **sweep):
    """One row per α of the scaling experiment: the exact solver's distance to softmax(r/α) with N = ∞."""
    settings = settings or (scaling.QUICK if quick else scaling.FULL)
    fixed = {k: getattr(settings, k) for k in ("n_contexts", "n_actions", "reward_scale", "problem_seed")}
    sweep["n_seeds"] = 1                             # deterministic: no data
    return run_sweep(floor_task, [{**fixed, "alpha": a} for a in settings.alphas],
                     experiment="theorem1-floor", **sweep)


# --------------------------------------------------------------------------- softness

@dataclass(frozen=True)
class SoftnessSettings:
    n_actions: int = 8
    reward_scale: float = 1.0
    ref: str = "dirichlet"         # π_ref ≠ uniform: DPO's β → ∞ end (π_ref) differs from SPO's α → ∞ end (uniform)
    problem_seed: int = 0
    n_pairs: int = 50_000          # finite data: the learned π scatters around the closed form
    params: tuple = tuple(float(2.0 ** k) for k in np.arange(-3, 3.01, 0.5))   # α for SPO, β for DPO
    n_seeds: int = 10


SOFTNESS_FULL = SoftnessSettings()
SOFTNESS_QUICK = SoftnessSettings(n_actions=4, n_pairs=5_000, params=(0.25, 1.0, 4.0), n_seeds=2)


def softness_task(config: dict, seed: int) -> list[dict]:
    """SPO (β = 0) for every α and DPO for every β on one data set: rows (method, param, action) with the
    learned probability and entropy next to the closed forms softmax(r/α) and π_ref·exp(r/β)/Z."""
    problem = make_problem(1, config["n_actions"], seed=config["problem_seed"],
                           reward_scale=config["reward_scale"], ref=config["ref"])
    params = list(config["params"])
    data = sample_pairs(problem, config["n_pairs"], seed=seed)
    spo = quietly(solve_exact_batched, problem, alpha=params, data=data)
    dpo = [quietly(solve_exact, problem, loss="dpo", beta=b, data=data) for b in params]
    rows = []
    for method, results in (("spo", spo), ("dpo", dpo)):
        for param, res in zip(params, results):
            closed = oracle_policy(problem, loss=method, **{("alpha" if method == "spo" else "beta"): param})
            h, h_closed = float(entropy(res.policy)[0]), float(entropy(closed)[0])
            rows += [{"method": method, "param": param, "status": res.status, "action": a,
                      "reward": float(problem.rewards[0, a]), "ref_prob": float(problem.ref_policy[0, a]),
                      "probability": float(res.policy[0, a]), "closed_form": float(closed[0, a]),
                      "entropy": h, "closed_form_entropy": h_closed}
                     for a in range(problem.n_actions)]
    return rows


def run_softness(quick: bool = False, settings: SoftnessSettings | None = None, **sweep):
    """Tidy DataFrame: one row per (seed, method, param, action)."""
    settings = settings or (SOFTNESS_QUICK if quick else SOFTNESS_FULL)
    sweep.setdefault("n_seeds", settings.n_seeds)
    return run_sweep(softness_task, [_settings_config(settings)], experiment="softness", **sweep)


# --------------------------------------------------------------------------- KL–reward frontier

@dataclass(frozen=True)
class FrontierSettings:
    n_contexts: int = 8
    n_actions: int = 8
    reward_scale: float = 1.0
    ref: str = "dirichlet"         # SPO at β = 0 ignores π_ref; DPO / RLHF / IPO start from it
    problem_seed: int = 0
    alphas: tuple = tuple(float(x) for x in np.logspace(-1.5, 1.5, 25))      # SPO, β = 0: softmax(r/α)
    spo_alpha: float = 0.25                                                   # α of the SPO β sweep
    spo_betas: tuple = tuple(float(x) for x in np.logspace(-2.5, 2.5, 26))
    dpo_betas: tuple = tuple(float(x) for x in np.logspace(-1.5, 2, 22))      # DPO and RLHF
    taus: tuple = tuple(float(x) for x in np.logspace(-2, 2, 21))             # IPO


FRONTIER_FULL = FrontierSettings()
FRONTIER_QUICK = FrontierSettings(n_contexts=2, n_actions=4, alphas=(0.1, 1.0, 10.0), spo_betas=(0.01, 1.0, 100.0),
                                  dpo_betas=(0.1, 1.0, 10.0), taus=(0.01, 1.0, 100.0))


def frontier_task(config: dict, seed: int) -> list[dict]:
    """Exact population minimisers along each method's sweep: one row per (method, param) with exact
    KL(π‖π_ref), expected reward, win rate against π_ref and entropy."""
    problem = make_problem(config["n_contexts"], config["n_actions"], seed=config["problem_seed"],
                           reward_scale=config["reward_scale"], ref=config["ref"])
    a0 = config["spo_alpha"]
    sweeps = {
        ("spo_alpha", "alpha"): (config["alphas"], quietly(solve_exact_batched, problem, alpha=list(config["alphas"]))),
        ("spo_beta", "beta"): (config["spo_betas"],
                               quietly(solve_exact_batched, problem, alpha=a0, beta=list(config["spo_betas"]))),
        ("dpo", "beta"): (config["dpo_betas"],
                          [quietly(solve_exact, problem, loss="dpo", beta=b) for b in config["dpo_betas"]]),
        ("rlhf", "beta"): (config["dpo_betas"], [quietly(solve_rlhf, problem, beta=b) for b in config["dpo_betas"]]),
        ("ipo", "tau"): (config["taus"], [quietly(solve_exact, problem, loss="ipo", tau=t) for t in config["taus"]]),
    }
    rows = []
    for (method, param_name), (values, results) in sweeps.items():
        for value, res in zip(values, results):
            rows.append({"method": method, "param_name": param_name, "param": float(value),
                         "alpha": a0 if method == "spo_beta" else (value if method == "spo_alpha" else np.nan),
                         "status": res.status, **policy_metrics(problem, res.policy)})
    return rows


def run_frontier(quick: bool = False, settings: FrontierSettings | None = None, **sweep):
    """Tidy DataFrame: one row per (method, param); deterministic (population, one seed)."""
    settings = settings or (FRONTIER_QUICK if quick else FRONTIER_FULL)
    sweep["n_seeds"] = 1
    return run_sweep(frontier_task, [_settings_config(settings, drop=())], experiment="frontier", **sweep)


# --------------------------------------------------------------------------- transformer learning curves

@dataclass(frozen=True)
class TransformerCurveSettings:
    loss: str = "spo"
    alpha: float = 1.0
    beta: float = 0.5              # > 0: the token-wise KL term is trained (and logged)
    steps: int = 1000
    log_interval: int = 20         # an exact evaluation (enumeration of the V^L responses) every this many steps
    batch_size: int = 1024
    kl_samples: int = 1024
    ref_steps: int = 100
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    n_seeds: int = 3


TRANSFORMER_FULL = TransformerCurveSettings()
TRANSFORMER_QUICK = TransformerCurveSettings(steps=30, log_interval=5, batch_size=64, kl_samples=64, ref_steps=10,
                                             n_layer=1, n_head=2, n_embd=16, n_seeds=2)


def transformer_available() -> bool:
    """True when the sequence mode (spo_tabular.transformer) is importable."""
    try:
        from .. import transformer  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_task(config: dict, seed: int) -> list[dict]:
    """Train the default sequence task once; its log rows (exact TV, exact and token-wise KL) per step."""
    from ..transformer import GPTConfig, TaskConfig
    from ..transformer.train import RunConfig, TrainConfig, train
    model = GPTConfig(n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"])
    cfg = TrainConfig(loss=config["loss"], alpha=config["alpha"], beta=config["beta"], steps=config["steps"],
                      batch_size=config["batch_size"], kl_samples=config["kl_samples"],
                      ref_steps=config["ref_steps"], seed=seed % 2**31)       # numpy's global seed is 32-bit
    result = train(TaskConfig(), model, cfg, RunConfig(device="cpu", log_interval=config["log_interval"],
                                                       eval_samples=256), log=lambda *a, **k: None)
    # History rows (train._log_row): tv = exact TV to the exact minimiser of the trained objective,
    # kl = exact KL(π‖π_ref) by enumeration, kl_tokenwise = the step's token-wise estimate (0 when β = 0).
    return [{"step": int(r["step"]), "loss_value": float(r["loss"]), "tv_to_target": float(r["tv"]),
             "kl_exact": float(r["kl"]),
             "kl_tokenwise": float(r["kl_tokenwise"]) if config["beta"] > 0 else float("nan"),
             "exact_reference": result.metrics.get("exact_reference", "")} for r in result.history]


def run_transformer_curves(quick: bool = False, settings: TransformerCurveSettings | None = None, **sweep):
    """Tidy DataFrame: one row per (seed, logged step); needs spo_tabular.transformer (ImportError otherwise)."""
    if not transformer_available():
        raise ImportError("the transformer curves need spo_tabular.transformer (the sequence mode), "
                          "which is not installed in this copy of spo_tabular")
    settings = settings or (TRANSFORMER_QUICK if quick else TRANSFORMER_FULL)
    sweep.setdefault("n_seeds", settings.n_seeds)
    return run_sweep(transformer_task, [_settings_config(settings)], experiment="transformer-curves", **sweep)
