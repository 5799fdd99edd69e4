"""Solvers: exact (deterministic, machine precision), batched exact, and minibatch/full-batch SGD."""
from .exact import (LOSS_SOLVERS, ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning,
                    SolveResult, solve_exact, solve_rlhf)
from .batched import solve_exact_batched
from .sgd import solve_sgd

__all__ = ["SolveResult", "solve_exact", "solve_rlhf", "solve_exact_batched", "solve_sgd", "LOSS_SOLVERS",
           "ConvergenceWarning", "NoFiniteMinimizerWarning", "NonUniqueMinimizerWarning"]
