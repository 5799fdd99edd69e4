"""Solvers: exact (deterministic, machine precision) and, elsewhere, minibatch SGD."""
from .exact import SolveResult, solve_exact, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning

__all__ = ["SolveResult", "solve_exact", "NoFiniteMinimizerWarning", "NonUniqueMinimizerWarning"]
