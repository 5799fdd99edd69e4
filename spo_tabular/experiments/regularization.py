"""`regularization`: the β path of the population SPO minimiser, from softmax(r/α) (β → 0) to π_ref (β → ∞).

For each problem seed, every β of the grid is solved exactly in one solve_exact_batched call (the
path is a batch of configurations on one problem). No closed form exists for β > 0 (SPEC §6);
each row reports the distance to both ends, KL(π‖π_ref), entropy and the gradient norm at the answer.
π_ref is Dirichlet so that the two ends differ.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..metrics import tv, weighted_mean
from ..problems import make_problem
from ..solvers.batched import solve_exact_batched
from ._common import policy_metrics, quietly
from .sweep import run_sweep

NAME = "regularization"


@dataclass(frozen=True)
class RegularizationSettings:
    n_contexts: int = 8
    n_actions: int = 6
    alpha: float = 1.0
    ref: str = "dirichlet"                 # π_ref ≠ uniform: the path's two ends differ
    log10_beta_min: float = -3.0           # β grid: n_betas values log-spaced over [10^min, 10^max]
    log10_beta_max: float = 3.0
    n_betas: int = 25
    n_seeds: int = 5                       # problem seeds


FULL = RegularizationSettings()
QUICK = RegularizationSettings(n_contexts=3, n_actions=4, n_betas=7, n_seeds=2)


def configs(settings: RegularizationSettings) -> list[dict]:
    """A single configuration: the β grid is solved inside each task, one row per β."""
    return [{k: x for k, x in asdict(settings).items() if k != "n_seeds"}]


def task(config: dict, seed: int) -> list[dict]:
    """The whole β path on the problem of this seed: one row per β."""
    problem = make_problem(config["n_contexts"], config["n_actions"], seed=seed, ref=config["ref"])
    betas = [float(b) for b in np.logspace(config["log10_beta_min"], config["log10_beta_max"], config["n_betas"])]
    alpha = config["alpha"]
    path = quietly(solve_exact_batched, problem, alpha=alpha, beta=betas)
    target = problem.target(alpha)
    rows = []
    for beta, res in zip(betas, path):
        row = {"beta": beta, "status": res.status, "grad_norm": res.grad_norm, "n_iter": res.n_iter}
        row.update(policy_metrics(problem, res.policy, target=target))
        row["max_tv_to_ref"] = float(tv(res.policy, problem.ref_policy).max())
        row["mean_tv_target_to_ref"] = weighted_mean(tv(target, problem.ref_policy), problem.context_probs)
        rows.append(row)
    return rows


def run(quick: bool = False, settings: RegularizationSettings | None = None, **sweep):
    """The tidy DataFrame of the experiment (one row per (β, seed); columns in docs/finite-data.md)."""
    settings = settings or (QUICK if quick else FULL)
    sweep.setdefault("n_seeds", settings.n_seeds)
    return run_sweep(task, configs(settings), experiment=NAME, **sweep)


def summarize(df) -> dict:
    """Both ends of the path (TV to softmax(r/α) at the smallest β, to π_ref at the largest), monotonicity
    of the mean distances along β, and the share of converged solves."""
    means = df.groupby("beta")[["mean_tv_to_target", "tv_to_ref", "kl_to_ref", "entropy"]].mean().sort_index()
    return {
        "smallest_beta": float(means.index[0]), "largest_beta": float(means.index[-1]),
        "tv_to_target_at_smallest_beta": float(means["mean_tv_to_target"].iloc[0]),
        "tv_to_ref_at_largest_beta": float(means["tv_to_ref"].iloc[-1]),
        "tv_to_target_increasing": bool(np.all(np.diff(means["mean_tv_to_target"]) >= -1e-9)),
        "tv_to_ref_decreasing": bool(np.all(np.diff(means["tv_to_ref"]) <= 1e-9)),
        "kl_to_ref_decreasing": bool(np.all(np.diff(means["kl_to_ref"]) <= 1e-9)),
        "converged_fraction": float((df["status"] == "converged").mean()),
        "by_beta": {f"{b:g}": {k: float(x) for k, x in r.items()} for b, r in means.iterrows()},
    }
