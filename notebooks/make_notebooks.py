"""Write the notebooks from the cell sources below (outputs stripped), so they stay thin and reviewable.

Run `python notebooks/make_notebooks.py` after editing; the test suite executes every notebook with
SPO_QUICK=1 (tiny settings) through nbclient and a real kernel.
"""
from __future__ import annotations

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

NOTEBOOKS = {
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
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    return nb


def main():
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
