"""`scaling`: statistical error of the empirical SPO minimiser against the number of pairs N (SPEC §6).

For each (N, α, seed): draw N Bradley–Terry pairs of one fixed problem, solve the empirical
objective (β = 0) exactly and with solve_sgd, and measure the distance to softmax(r/α). Theory: the
error shrinks like N^(−1/2); the summary fits the log-log slope of the mean distance against N.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..metrics import tv
from ..preferences import sample_pairs
from ..problems import make_problem
from ..solvers.exact import solve_exact
from ..solvers.sgd import solve_sgd
from ._common import loglog_slope, policy_metrics, quietly
from .sweep import grid, run_sweep

NAME = "scaling"


@dataclass(frozen=True)
class ScalingSettings:
    n_contexts: int = 2                   # a small problem: every N ≥ 100 gives most contexts a finite minimiser
    n_actions: int = 4
    reward_scale: float = 1.0             # rewards ~ scale·N(0, 1)
    problem_seed: int = 0                 # one fixed problem; the sweep's seeds draw the data
    n_pairs: tuple = (100, 1_000, 10_000, 100_000, 1_000_000)
    alphas: tuple = (0.5, 1.0, 2.0)
    n_seeds: int = 10
    sgd_steps: int = 1000                 # full-batch Adam steps of solve_sgd (its default)


FULL = ScalingSettings()
QUICK = ScalingSettings(n_pairs=(100, 1_000, 10_000), alphas=(1.0,), n_seeds=2, sgd_steps=300)


def configs(settings: ScalingSettings) -> list[dict]:
    """One configuration per (N, α); the fixed settings ride along (and enter the config hash)."""
    fixed = {k: x for k, x in asdict(settings).items() if k not in ("n_pairs", "alphas", "n_seeds")}
    return [{**fixed, **c} for c in grid(n_pairs=list(settings.n_pairs), alpha=list(settings.alphas))]


def task(config: dict, seed: int) -> dict:
    """Exact and SGD empirical minimisers on N sampled pairs: distances to softmax(r/α) and to each other."""
    problem = make_problem(config["n_contexts"], config["n_actions"], seed=config["problem_seed"],
                           reward_scale=config["reward_scale"])
    alpha = config["alpha"]
    target = problem.target(alpha)
    data = sample_pairs(problem, config["n_pairs"], seed=seed)
    exact = quietly(solve_exact, problem, alpha=alpha, data=data)
    sgd = quietly(solve_sgd, problem, data, alpha=alpha, steps=config["sgd_steps"], quiet=True)
    finite = exact.status in ("converged", "not_unique")
    row = {"exact_status": exact.status, "sgd_status": sgd.status,
           "sgd_tv_to_exact": float(tv(sgd.policy, exact.policy).max()) if finite else float("nan")}
    for prefix, res in (("exact_", exact), ("sgd_", sgd)):
        m = policy_metrics(problem, res.policy, target=target, prefix=prefix)
        if not finite:          # no finite minimiser: the distance is that of an arbitrary iterate
            m[prefix + "max_tv_to_target"] = m[prefix + "mean_tv_to_target"] = float("nan")
        row.update({k: m[k] for k in (prefix + "max_tv_to_target", prefix + "mean_tv_to_target", prefix + "entropy")})
    return row


def run(quick: bool = False, settings: ScalingSettings | None = None, **sweep) -> "pd.DataFrame":
    """The tidy DataFrame of the experiment (columns in docs/finite-data.md); sweep options pass to run_sweep."""
    settings = settings or (QUICK if quick else FULL)
    sweep.setdefault("n_seeds", settings.n_seeds)
    return run_sweep(task, configs(settings), experiment=NAME, **sweep)


def summarize(df) -> dict:
    """Fitted log-log slopes of the mean max-TV against N (pooled over α and per α), theory −1/2."""
    out = {"theory_slope": -0.5, "n_rows": int(len(df)),
           "no_finite_minimizer_fraction": float((df["exact_status"] == "no_finite_minimizer").mean())}
    for solver in ("exact", "sgd"):
        col = f"{solver}_max_tv_to_target"
        means = df.groupby(["alpha", "n_pairs"])[col].mean().reset_index()
        per_alpha = {f"{a:g}": loglog_slope(g["n_pairs"], g[col]) for a, g in means.groupby("alpha")}
        # Pooled: the slope shared by every α (each α has its own intercept) = mean of centred fits.
        centred = means.assign(lx=np.log(means["n_pairs"]), ly=np.log(means[col]))
        centred = centred[np.isfinite(centred["ly"])]
        centred[["lx", "ly"]] = centred[["lx", "ly"]] - centred.groupby("alpha")[["lx", "ly"]].transform("mean")
        pooled = float((centred["lx"] * centred["ly"]).sum() / (centred["lx"] ** 2).sum()) if len(centred) > 1 else float("nan")
        out[f"slope_{solver}"] = pooled
        out[f"slope_{solver}_by_alpha"] = per_alpha
        out[f"mean_max_tv_{solver}_by_n_pairs"] = {str(int(n)): float(x) for n, x in
                                                   df.groupby("n_pairs")[col].mean().items()}
    out["max_sgd_tv_to_exact"] = float(df["sgd_tv_to_exact"].max())
    return out
