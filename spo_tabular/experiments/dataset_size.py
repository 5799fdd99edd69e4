"""`dataset-size`: SPO vs DPO as the number of pairs N grows (the SPO paper's open question on data).

For each (N, method, seed): N Bradley–Terry pairs of one problem, each method trained by solve_sgd
with the same budget (full batch, fixed steps). Small N leaves some pairs unanimous: without a KL
term (SPO β = 0, DPO) there is no finite minimiser and the iterate runs towards a deterministic
policy; SPO with β > 0 stays finite but carries a bias that does not shrink with N. Large N is the
regime where the regulariser matters least: every method approaches its target like N^(−1/2)
until that bias. π_ref is uniform and DPO's β equals α, so all methods share the target
softmax(r/α). With uniform π_ref, DPO's objective is SPO's (β = 0, α = β_DPO) up to a factor
(log π − log π_ref = z + const): their rows coincide, and the contrast that remains is SPO's
global KL term.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..graphs import comparison_graph
from ..preferences import sample_pairs
from ..problems import make_problem
from ..solvers.sgd import solve_sgd
from ._common import mean_interval, policy_metrics, quietly
from .sweep import grid, run_sweep

NAME = "dataset-size"

METHODS = {
    "spo": ("spo", {"alpha": 1.0, "beta": 0.0}),
    "spo_kl": ("spo", {"alpha": 1.0, "beta": 0.1}),
    "dpo": ("dpo", {"beta": 1.0}),
}


@dataclass(frozen=True)
class DatasetSizeSettings:
    n_contexts: int = 4
    n_actions: int = 6
    reward_scale: float = 2.0            # wide reward gaps: unanimous pairs are common at small N
    problem_seed: int = 0
    n_pairs: tuple = (10, 30, 100, 300, 1_000, 3_000, 10_000, 100_000)
    methods: tuple = ("spo", "spo_kl", "dpo")
    n_seeds: int = 10
    sgd_steps: int = 1000                # the same optimisation budget for every method


FULL = DatasetSizeSettings()
QUICK = DatasetSizeSettings(n_pairs=(10, 100, 1_000), n_seeds=2, sgd_steps=300)


def configs(settings: DatasetSizeSettings) -> list[dict]:
    """One configuration per (N, method)."""
    fixed = {k: x for k, x in asdict(settings).items() if k not in ("n_pairs", "methods", "n_seeds")}
    return [{**fixed, **c} for c in grid(n_pairs=list(settings.n_pairs), method=list(settings.methods))]


def task(config: dict, seed: int) -> dict:
    """Train one method on N pairs; exact metrics of the final policy and whether a finite minimiser exists."""
    problem = make_problem(config["n_contexts"], config["n_actions"], seed=config["problem_seed"],
                           reward_scale=config["reward_scale"])
    loss, params = METHODS[config["method"]]
    data = sample_pairs(problem, config["n_pairs"], seed=seed)
    res = quietly(solve_sgd, problem, data, loss=loss, steps=config["sgd_steps"], quiet=True, **params)
    row = {"loss": loss, "alpha": params.get("alpha", float("nan")), "beta": params["beta"],
           "status": res.status,
           "strongly_connected": bool(comparison_graph(data.counts() > 0).unique.all())}
    row.update(policy_metrics(problem, res.policy, target=problem.target(1.0)))
    return row


def run(quick: bool = False, settings: DatasetSizeSettings | None = None, **sweep):
    """The tidy DataFrame of the experiment (columns in docs/finite-data.md)."""
    settings = settings or (QUICK if quick else FULL)
    sweep.setdefault("n_seeds", settings.n_seeds)
    return run_sweep(task, configs(settings), experiment=NAME, **sweep)


def summarize(df) -> dict:
    """Per (method, N): mean TV to softmax(r/α) with 95% interval, entropy, min probability, and the
    fraction of data sets without a finite minimiser for the unregularised objective."""
    out = {"by_method": {}}
    for method, g in df.groupby("method"):
        out["by_method"][method] = {
            str(int(n)): {"max_tv_to_target": dict(zip(("mean", "low", "high"), mean_interval(h["max_tv_to_target"]))),
                          "entropy": float(h["entropy"].mean()), "min_prob": float(h["min_prob"].mean()),
                          "no_finite_minimizer_fraction": float((~h["strongly_connected"]).mean())}
            for n, h in g.groupby("n_pairs")}
    return out
