"""spo_tabular: verify and simulate Soft Preference Optimization (SPO, arXiv 2405.00747)."""
from .oracles import oracle_policy
from .preferences import (BestOfNData, PairData, RankedData, bradley_terry, pair_mass, pair_probs, sample_best_of_n,
                          sample_pairs, sample_rankings)
from .problems import TabularProblem, make_problem, soft_optimal_policy
from .solvers import SolveResult, solve_exact, solve_exact_batched, solve_rlhf, solve_sgd

__version__ = "0.1.0"

__all__ = [
    "TabularProblem", "make_problem", "soft_optimal_policy",
    "PairData", "bradley_terry", "pair_mass", "pair_probs", "sample_pairs",
    "BestOfNData", "RankedData", "sample_best_of_n", "sample_rankings",
    "SolveResult", "solve_exact", "solve_exact_batched", "solve_rlhf", "solve_sgd", "oracle_policy",
]
