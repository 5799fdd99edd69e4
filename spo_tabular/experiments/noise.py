"""`noise`: label noise ε, SPO vs DPO vs IPO on finite data (the SPO paper's open question on noise).

For each (ε, method, seed): N pairs whose labels follow Bradley–Terry flipped with probability ε
(SPEC §2); fit each method's empirical objective; measure the exact distance to the noiseless
target softmax(r/α), the entropy and the expert's win rate against π_ref (noiseless BT expert).
π_ref is uniform so that DPO's noiseless optimum π_ref·exp(r/β) with β = α is the same target.
Methods share the data at a given (ε, seed) (common random numbers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..preferences import expert_preferences, sample_pairs
from ..problems import make_problem
from ..solvers.exact import solve_exact
from ..solvers.sgd import solve_sgd
from ._common import mean_interval, policy_metrics, quietly
from .sweep import grid, run_sweep

NAME = "noise"

# (loss, hyperparameters) per method label. SPO α = 1 with and without the global KL term; DPO
# β = 1: with uniform π_ref its objective is SPO's with α = β up to a factor (log π − log π_ref =
# z + const), so "spo" and "dpo" must coincide, a built-in check. IPO τ = 0.25: its noiseless
# optimum solves g_i − g_j ≈ (2σ(Δ) − 1)/(2τ), close to Δ for reward gaps Δ ≈ 1.
METHODS = {
    "spo": ("spo", {"alpha": 1.0, "beta": 0.0}),
    "spo_kl": ("spo", {"alpha": 1.0, "beta": 0.1}),
    "dpo": ("dpo", {"beta": 1.0}),
    "ipo": ("ipo", {"tau": 0.25}),
}


@dataclass(frozen=True)
class NoiseSettings:
    n_contexts: int = 4
    n_actions: int = 5
    problem_seed: int = 0
    n_pairs: int = 20_000
    noise: tuple = (0.0, 0.1, 0.2, 0.3, 0.4, 0.45)
    methods: tuple = ("spo", "spo_kl", "dpo", "ipo")
    n_seeds: int = 10
    sgd_steps: int = 1000


FULL = NoiseSettings()
QUICK = NoiseSettings(n_pairs=2_000, noise=(0.0, 0.2, 0.4), n_seeds=2, sgd_steps=300)


def configs(settings: NoiseSettings) -> list[dict]:
    """One configuration per (ε, method)."""
    fixed = {k: x for k, x in asdict(settings).items() if k not in ("noise", "methods", "n_seeds")}
    return [{**fixed, **c} for c in grid(noise=list(settings.noise), method=list(settings.methods))]


def task(config: dict, seed: int) -> dict:
    """Fit one method on noisy data; exact SPO solver for SPO, full-batch solve_sgd for DPO and IPO."""
    problem = make_problem(config["n_contexts"], config["n_actions"], seed=config["problem_seed"])
    loss, params = METHODS[config["method"]]
    noisy = expert_preferences(problem, "noisy", noise=config["noise"])
    data = sample_pairs(problem, config["n_pairs"], seed=seed, preference=noisy)
    if loss == "spo":
        res = quietly(solve_exact, problem, data=data, **params)
    else:
        res = quietly(solve_sgd, problem, data, loss=loss, steps=config["sgd_steps"], quiet=True, **params)
    row = {"loss": loss, **{k: params.get(k, float("nan")) for k in ("alpha", "beta", "tau")}, "status": res.status}
    row.update(policy_metrics(problem, res.policy, target=problem.target(1.0)))
    return row


def run(quick: bool = False, settings: NoiseSettings | None = None, **sweep):
    """The tidy DataFrame of the experiment (columns in docs/finite-data.md)."""
    settings = settings or (QUICK if quick else FULL)
    sweep.setdefault("n_seeds", settings.n_seeds)
    return run_sweep(task, configs(settings), experiment=NAME, **sweep)


def summarize(df) -> dict:
    """Mean (and 95% interval) of TV to the noiseless target, entropy and win rate per (method, ε)."""
    out = {"by_method": {}}
    for method, g in df.groupby("method"):
        out["by_method"][method] = {
            f"{eps:g}": {col: dict(zip(("mean", "low", "high"), mean_interval(h[col])))
                         for col in ("max_tv_to_target", "entropy", "win_rate_vs_ref")}
            for eps, h in g.groupby("noise")}
    return out
