"""Solvers: exact (deterministic, machine precision) and, elsewhere, minibatch SGD."""
from .exact import SolveResult, solve_exact, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning
from .batched import solve_exact_batched
from .sgd import solve_sgd

__all__ = ["SolveResult", "solve_exact", "NoFiniteMinimizerWarning", "NonUniqueMinimizerWarning",
           "solve_exact_batched", "solve_sgd"]
