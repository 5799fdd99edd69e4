"""spo_tabular: verify and simulate Soft Preference Optimization (SPO, arXiv 2405.00747)."""
from .problems import TabularProblem, make_problem, soft_optimal_policy
from .preferences import PairData, bradley_terry, pair_mass, pair_probs, sample_pairs
from .solvers import SolveResult, solve_exact, solve_exact_batched, solve_sgd

__version__ = "0.1.0"

__all__ = [
    "TabularProblem", "make_problem", "soft_optimal_policy",
    "PairData", "bradley_terry", "pair_mass", "pair_probs", "sample_pairs",
    "SolveResult", "solve_exact", "solve_exact_batched", "solve_sgd",
]
