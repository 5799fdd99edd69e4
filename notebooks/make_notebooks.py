"""Write the notebooks from the cell sources below (outputs stripped), so they stay thin and reviewable.

Run `python notebooks/make_notebooks.py` after editing; the test suite executes every notebook with
SPO_QUICK=1 (tiny settings) through nbclient and a real kernel.
"""
from __future__ import annotations

import hashlib
import pathlib

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

SETUP = '''import os
QUICK = os.environ.get("SPO_QUICK") == "1"   # the test suite runs every notebook with tiny settings
import numpy as np
import matplotlib
matplotlib.use("Agg") if QUICK else None
import matplotlib.pyplot as plt
import spo_tabular as spo'''

NB01 = [
    ("md", "# Theorem 1, step by step\n\n**Claim** (SPEC §6). With Bradley–Terry expert preferences, β = 0, "
           "symmetric positive weights and a connected comparison graph in every context, the unique minimiser "
           "of the SPO preference loss is softmax(r/α). On N sampled pairs the empirical minimiser approaches "
           "it like N^(−1/2). Every cell calls `spo_tabular`; nothing is defined here."),
    ("code", SETUP),
    ("md", "## The problem: rewards r, reference π_ref and the target softmax(r/α)"),
    ("code", '''alpha = 0.5
problem = spo.make_problem(2, 4, seed=0)
print(problem)
print("rewards r:\\n", problem.rewards.round(3))
print("target softmax(r/alpha):\\n", problem.target(alpha).round(4))'''),
    ("md", "## Data: N pairs shown uniformly, labelled by the Bradley–Terry expert"),
    ("code", '''n_pairs = 2_000 if QUICK else 100_000
data = spo.sample_pairs(problem, n_pairs, seed=1)
print(len(data), "pairs; counts of (chosen, rejected) in context 0:\\n", data.counts()[0])
print("empirical pair mass vs population pair mass, max abs difference:",
      float(np.abs(data.pair_mass() - spo.pair_mass(problem)).max()))'''),
    ("md", "## Exact and SGD solves\n\nThe population objective (data=None) is minimised exactly by Newton's "
           "method; on the sampled pairs both the exact solver and full-batch Adam (`solve_sgd`) find the "
           "empirical minimiser, which differs from the target by the statistical error only."),
    ("code", '''from spo_tabular.metrics import tv
population = spo.solve_exact(problem, alpha=alpha)
exact = spo.solve_exact(problem, alpha=alpha, data=data)
sgd = spo.solve_sgd(problem, data, alpha=alpha, steps=300 if QUICK else 1000, quiet=True)
target = problem.target(alpha)
for name, res in [("population, exact", population), ("N pairs, exact", exact), ("N pairs, SGD", sgd)]:
    print(f"{name:18s} status={res.status:10s} max TV to softmax(r/alpha) = {tv(res.policy, target).max():.2e}")
print(f"SGD vs exact on the same data: max TV = {tv(sgd.policy, exact.policy).max():.2e}")'''),
    ("md", "## The check"),
    ("code", '''from spo_tabular.checks import check_theorem1
report = check_theorem1(problem, alpha=alpha)
report.as_dict()'''),
    ("md", "## The rate: max TV against N (the `scaling` experiment) and the figure"),
    ("code", '''from spo_tabular import figures
from spo_tabular.experiments import run_experiment
from spo_tabular.experiments.figure_data import run_population_floor
df, summary = run_experiment("scaling", quick=QUICK, quiet=True)
floor = run_population_floor(quick=QUICK, quiet=True)
print("fitted log-log slope (exact solver):", round(summary["slope_exact"], 3), "(theory: -0.5)")
fig = figures.theorem1(df, floor=floor)
fig'''),
]

NB03 = [
    ("md", "# Finite data\n\nThe finite-data experiments (`spo_tabular.experiments`, `spo-tabular experiment NAME`): "
           "label noise, data-set size, collapse on the IPO toy sets, and the β path; each returns a tidy "
           "DataFrame and a summary, and the figures draw them. Nothing is defined here."),
    ("code", SETUP),
    ("code", '''from spo_tabular import figures
from spo_tabular.experiments import EXPERIMENTS, run_experiment
from spo_tabular.experiments.figure_data import run_frontier, run_softness
for name, exp in EXPERIMENTS.items():
    print(f"{name:15s} {exp.help}")'''),
    ("md", "## Label noise ε: SPO vs DPO vs IPO"),
    ("code", '''noise_df, noise_summary = run_experiment("noise", quick=QUICK, quiet=True)
noise_df.groupby(["method", "noise"])[["max_tv_to_target", "entropy", "win_rate_vs_ref"]].mean().round(4)'''),
    ("code", "figures.noise(noise_df)"),
    ("md", "## Data-set size: unanimous pairs at small N"),
    ("code", '''size_df, _ = run_experiment("dataset-size", quick=QUICK, quiet=True)
size_df.groupby(["method", "n_pairs"]).agg(max_tv=("max_tv_to_target", "mean"), entropy=("entropy", "mean"),
                                          strongly_connected=("strongly_connected", "mean")).round(4)'''),
    ("md", "## Collapse on the IPO toy data sets D1–D3"),
    ("code", '''collapse_df, collapse_summary = run_experiment("collapse", quick=QUICK, quiet=True)
{d: {m: round(r["entropy"]["mean"], 3) for m, r in v.items()} for d, v in collapse_summary["final"].items()}'''),
    ("code", "figures.collapse(collapse_df)"),
    ("md", "## The β path and the softness of the learned policy"),
    ("code", '''reg_df, reg_summary = run_experiment("regularization", quick=QUICK, quiet=True)
figures.regularization(reg_df)'''),
    ("code", "figures.softness(run_softness(quick=QUICK, quiet=True))"),
    ("md", "## The exact KL–reward frontier"),
    ("code", "figures.frontier(run_frontier(quick=QUICK, quiet=True))"),
]

NB04 = [
    ("md", "# Sequence mode: a small transformer checked by enumeration\n\nSPEC §8. A causal transformer is "
           "trained with the same per-pair losses on token sequences; while V^L is small its whole distribution "
           "is enumerated and compared exactly with the tabular answer. Needs `spo_tabular.transformer`."),
    ("code", SETUP),
    ("code", '''from spo_tabular import figures
from spo_tabular.experiments.figure_data import run_transformer_curves
from spo_tabular.transformer import GPTConfig, TaskConfig
from spo_tabular.transformer.train import RunConfig, TrainConfig, train'''),
    ("md", "## One run: SPO with a global KL term (β > 0), compared with `solve_exact` on the same problem"),
    ("code", '''model = GPTConfig(n_layer=1, n_head=2, n_embd=16) if QUICK else GPTConfig()
cfg = TrainConfig(beta=0.5, steps=20 if QUICK else 1000, batch_size=64 if QUICK else 1024,
                  kl_samples=64 if QUICK else 1024, ref_steps=10 if QUICK else 100)
result = train(TaskConfig(), model, cfg, RunConfig(device="cpu", log_interval=5 if QUICK else 100))
{k: result.metrics[k] for k in ("tv_exact", "tv_target", "kl_ref", "entropy", "win_rate", "exact_reference")}'''),
    ("md", "## Learning curves over seeds: exact TV to the minimiser, exact and token-wise KL"),
    ("code", '''curves = run_transformer_curves(quick=QUICK, quiet=True)
figures.transformer(curves)'''),
]

NOTEBOOKS = {
    "01_theorem1.ipynb": NB01,
    "02_losses_and_invariants.ipynb": [
        ("md", "# Losses and their invariants\n\nThe loss zoo of SPEC §4, the closed-form oracles of §6, and a few "
               "invariants checked numerically. Everything here calls `spo_tabular`; nothing is defined."),
        ("code", SETUP),
        ("code", '''import torch
from spo_tabular import losses
a = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
b = torch.tensor([0.1, 1.0, -5.0], dtype=torch.float64)
alpha = 0.7
# log σ(t) − log σ(−t) = t  ⇒  spo(a, b) − spo(b, a) = −(a − b)
print(losses.spo_loss(a, b, alpha=alpha) - losses.spo_loss(b, a, alpha=alpha), -(a - b))
# best-of-2 and ranked with k = 2 equal the pairwise loss
pair = torch.stack([a, b], 1)
print(losses.spo_best_of_n_loss(pair, torch.zeros(3, dtype=torch.long), alpha=alpha))
print(losses.spo_ranked_loss(pair, alpha=alpha), losses.spo_loss(a, b, alpha=alpha))'''),
        ("md", "## Every loss solved exactly against its oracle"),
        ("code", '''from spo_tabular.oracles import oracle_policy
from spo_tabular.metrics import tv
problem = spo.make_problem(4 if QUICK else 16, 5 if QUICK else 8, seed=0, ref="dirichlet")
settings = {"spo": dict(alpha=0.7), "spo_best_of_n": dict(alpha=0.7, k=3), "spo_ranked": dict(alpha=0.7, k=3),
            "dpo": dict(beta=0.5), "ipo": dict(tau=0.5)}
for loss, params in settings.items():
    res = spo.solve_exact(problem, loss=loss, **params)
    target = oracle_policy(problem, loss=loss, **params)
    print(f"{loss:15s} converged={res.converged}  max TV to oracle = {tv(res.policy, target).max():.2e}")'''),
        ("md", "## Softness: entropy of softmax(r/α) against α, and of π_ref·exp(r/β) against β"),
        ("code", '''from spo_tabular.metrics import entropy
alphas = np.logspace(-2, 1.5, 12 if QUICK else 40)
ent_spo = [entropy(spo.solve_exact(problem, alpha=a).policy).mean() for a in alphas]
ent_dpo = [entropy(spo.solve_exact(problem, loss="dpo", beta=a).policy).mean() for a in alphas]
fig, ax = plt.subplots(figsize=(4, 3))
ax.semilogx(alphas, ent_spo, label="SPO, x = α")
ax.semilogx(alphas, ent_dpo, "--", label="DPO, x = β")
ax.set_xlabel("α or β"); ax.set_ylabel("mean entropy (nats)"); ax.legend(); fig.tight_layout()'''),
    ],
    "03_finite_data.ipynb": NB03,
    "04_transformer.ipynb": NB04,
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    for k, cell in enumerate(nb.cells):   # fixed ids (nbformat draws random ones): regenerating changes nothing
        cell.id = hashlib.sha256(f"{name}:{k}".encode()).hexdigest()[:8]
    return nb


def main():
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
