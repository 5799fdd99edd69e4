"""Solvers: exact (deterministic, machine precision) and, elsewhere, minibatch SGD."""
from .exact import (LOSS_SOLVERS, ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning,
                    SolveResult, solve_exact, solve_rlhf)

__all__ = ["SolveResult", "solve_exact", "solve_rlhf", "LOSS_SOLVERS", "ConvergenceWarning",
           "NoFiniteMinimizerWarning", "NonUniqueMinimizerWarning"]
