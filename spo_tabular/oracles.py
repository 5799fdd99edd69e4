"""Closed-form minimisers ("oracles") of the population objectives, where one exists (SPEC §6).

SPO (pairwise, best-of-n, ranked; β = 0, BT / Luce expert, symmetric μ, connected graph) → softmax(r/α);
DPO and RLHF → π_ref·exp(r/β)/Z; IPO → π_ref·exp(g)/Z with g the weighted graph-Laplacian least-squares
solution of g_i − g_j ≈ (2P_ij − 1)/(2τ). Hinge, CPO and SPO with β > 0 have none: NoClosedFormError (a ValueError) says so.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from . import _validation as v
from .graphs import comparison_graph
from .preferences import pair_mass, pair_probs, preference_matrix
from .problems import TabularProblem



class NoClosedFormError(ValueError):
    """The requested loss / setting has no closed-form minimiser (use solve_exact and check optimality)."""


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits, axis=-1))


def _pair_weights(problem, weights, *, symmetric: bool):
    if weights is None:
        return None
    m, n = problem.n_contexts, problem.n_actions
    mu = v.float_array("weights", weights, shape=(m, n, n))
    if np.any(mu < 0):
        raise ValueError("weights must be non-negative")
    if symmetric and not np.allclose(mu, mu.transpose(0, 2, 1), rtol=1e-12, atol=0.0):
        raise NoClosedFormError("no closed form with asymmetric weights (mu[x,i,j] != mu[x,j,i]): "
                                "they move the minimiser away from the oracle; use solve_exact")
    return mu


def _require_connected(support: np.ndarray, what: str):
    graph = comparison_graph(support)
    if (graph.n_components > 1).any():
        bad = np.flatnonzero(graph.n_components > 1)
        raise NoClosedFormError(f"{what}: the comparison graph of {bad.size} context(s) (first: {bad[:5].tolist()}) is "
                         "disconnected, so the minimiser is not unique and no single closed form applies")


def _pair_support(problem, sampler, mu):
    q = pair_probs(problem, sampler)
    shown = (q + q.transpose(0, 2, 1)) > 0
    return shown if mu is None else shown & (mu > 0) & (mu.transpose(0, 2, 1) > 0)


def _no_kl(loss, beta):
    if beta is not None and v.nonnegative_float("beta", beta) > 0:
        raise NoClosedFormError(f"no closed form for loss={loss!r} with beta > 0 (a KL weight): the minimiser moves from "
                         "softmax(r/alpha) toward pi_ref; use solve_exact and check stationarity")


def _bt_only(loss, preference):
    if preference is not None:
        raise NoClosedFormError(f"no closed form for loss={loss!r} with a non-Bradley–Terry preference: the minimiser "
                         "differs from the oracle; use solve_exact")


def _spo_oracle(problem, *, sampler, preference, alpha=None, beta=None, weights=None):
    alpha = v.positive_float("alpha", _need("alpha", alpha, "spo"))
    _no_kl("spo", beta)
    _bt_only("spo", preference)
    mu = _pair_weights(problem, weights, symmetric=True)
    _require_connected(_pair_support(problem, sampler, mu), "spo")
    return problem.target(alpha)


def _choice_oracle(loss):
    def oracle(problem, *, sampler, preference, alpha=None, beta=None, k=None, weights=None):
        alpha = v.positive_float("alpha", _need("alpha", alpha, loss))
        _no_kl(loss, beta)
        _bt_only(loss, preference)
        k = v.positive_int("k", _need("k", k, loss), minimum=2)
        if k > problem.n_actions:
            raise ValueError(f"k must be at most n_actions = {problem.n_actions}, got {k}")
        if not (isinstance(sampler, str) and sampler == "uniform"):
            raise ValueError(f"sampler must be 'uniform' for loss={loss!r} (shown k-sets uniform), got {v.describe(sampler)}")
        if weights is not None:
            mu = v.float_array("weights", weights, ndim=2)
            # A per-set weight is symmetric by construction; zero weights could disconnect the graph.
            if mu.shape[0] != problem.n_contexts or np.any(mu <= 0):
                raise ValueError("weights for the population multi-response oracle must be strictly positive, "
                                 "shape (n_contexts, C(n_actions, k))")
        return problem.target(alpha)
    return oracle


def _dpo_oracle(loss):
    def oracle(problem, *, sampler, preference, beta=None, weights=None):
        beta = v.positive_float("beta", _need("beta", beta, loss))
        _bt_only(loss, preference)
        mu = _pair_weights(problem, weights, symmetric=True)
        _require_connected(_pair_support(problem, sampler, mu), loss)
        # BT: β h_ij = r_i − r_j makes every pair's gradient vanish, so log π − log π_ref = r/β + const.
        return _softmax(problem.log_ref + problem.rewards / beta)
    return oracle


def ipo_closed_form(pair_mass_, log_ref, *, tau: float) -> np.ndarray:
    """π = softmax(log π_ref + g), g solving Σ_j S_ij (g_i − g_j − y_ij) = 0, S = W + Wᵀ, y = (W − Wᵀ)/(2τS).

    Σ_ij W_ij (g_i − g_j − 1/(2τ))² splits per unordered pair into S_ij (g_i − g_j − y_ij)² + const, with
    y_ij = (2P̃_ij − 1)/(2τ), P̃ = W/S: a weighted least-squares problem whose normal equations are the
    graph-Laplacian system L g = b, b_i = Σ_j S_ij y_ij; the mean of g is fixed to 0. Shapes (m, n, n) → (m, n).
    """
    tau = v.positive_float("tau", tau)
    W = np.asarray(pair_mass_, dtype=np.float64)
    m, n, _ = W.shape
    S = W + W.transpose(0, 2, 1)
    y = np.divide(W - W.transpose(0, 2, 1), S, out=np.zeros_like(W), where=S > 0) / (2.0 * tau)
    b = (S * y).sum(axis=2)
    L = -S.copy()
    L[:, np.arange(n), np.arange(n)] += S.sum(axis=2)
    scale = np.maximum(S.sum(axis=(1, 2)), np.finfo(float).tiny) / n
    g = np.linalg.solve(L + scale[:, None, None] / n, b[..., None])[..., 0]   # rank-one gauge: mean g = 0
    return _softmax(np.asarray(log_ref) + g)


def _ipo_oracle(problem, *, sampler, preference, tau=None, weights=None):
    tau = v.positive_float("tau", _need("tau", tau, "ipo"))
    W = pair_mass(problem, sampler=sampler, preference=preference)
    mu = _pair_weights(problem, weights, symmetric=False)
    if mu is not None:
        W = W * mu
    _require_connected((W + W.transpose(0, 2, 1)) > 0, "ipo")
    return ipo_closed_form(W, problem.log_ref, tau=tau)


def _no_oracle(reason):
    def oracle(problem, **_):
        raise NoClosedFormError(reason)
    return oracle


def _need(name, value, loss):
    if value is None:
        raise TypeError(f"{name} is required for loss={loss!r}")
    return value


ORACLES = {
    "spo": _spo_oracle,
    "spo_best_of_n": _choice_oracle("spo_best_of_n"),
    "spo_ranked": _choice_oracle("spo_ranked"),
    "dpo": _dpo_oracle("dpo"),
    "rlhf": _dpo_oracle("rlhf"),
    "ipo": _ipo_oracle,
    "hinge": _no_oracle("no closed-form minimiser is known for loss='hinge' (piecewise linear, often not unique); "
                        "solve_exact(loss='hinge') solves it as an LP and certifies the answer by duality"),
    "cpo": _no_oracle("no closed-form minimiser is known for loss='cpo' (the NLL term couples every pair); "
                      "use solve_exact(loss='cpo') and check stationarity"),
}


def oracle_policy(problem: TabularProblem, *, loss: str, sampler="uniform", preference=None, **params) -> np.ndarray:
    """The closed-form population minimiser (n_contexts, n_actions) of `loss`; NoClosedFormError where none exists.

    params by name as in solve_exact: alpha, beta, tau, k, weights (RLHF: beta).
    """
    if not isinstance(problem, TabularProblem):
        raise TypeError(f"problem must be a TabularProblem, got {type(problem).__name__}")
    oracle = ORACLES.get(loss) if isinstance(loss, str) else None
    if oracle is None:
        raise ValueError(f"loss must be one of {sorted(ORACLES)}, got {v.describe(loss)}")
    preference_matrix(problem, preference)            # validates the array early
    try:
        return oracle(problem, sampler=sampler, preference=preference, **params)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            name = str(exc).split("'")[-2]
            raise ValueError(f"{name} is not a parameter of loss={loss!r}") from None
        raise
