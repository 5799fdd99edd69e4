"""Each loss's exact minimiser matches its oracle on random problems (SPEC §6); where no closed form
exists (hinge, CPO, SPO with β > 0) the answer is certified independently (LP duality / autograd)."""
import warnings

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from spo_tabular.loss_checks import hinge_certificate, stationarity
from spo_tabular.oracles import oracle_policy
from spo_tabular.solvers import ConvergenceWarning, solve_exact, solve_rlhf
from zoo_strategies import alphas, betas, floats, lams, preferences, problems, taus  # noqa: F401

TOL = 1e-9


def _tv(p, q):
    return float(np.abs(p - q).sum(axis=1).max() / 2)


@given(problem=problems(), alpha=alphas, sampler=st.sampled_from(["uniform", "ref"]))
def test_spo_pairwise_minimiser_is_the_soft_optimum(problem, alpha, sampler):
    res = solve_exact(problem, alpha=alpha, sampler=sampler)
    assert res.status == "converged"
    assert _tv(res.policy, oracle_policy(problem, loss="spo", alpha=alpha, sampler=sampler)) <= TOL


@pytest.mark.parametrize("loss", ["spo_best_of_n", "spo_ranked"])
@given(problem=problems(), alpha=alphas, data=st.data())
def test_multi_response_minimiser_is_the_soft_optimum(problem, alpha, loss, data):
    """Best-of-k under Luce and rankings under Plackett–Luce, shown k-sets uniform: argmin = softmax(r/α)."""
    k = data.draw(st.integers(2, problem.n_actions))
    res = solve_exact(problem, loss=loss, alpha=alpha, k=k)
    assert res.status == "converged"
    assert _tv(res.policy, oracle_policy(problem, loss=loss, alpha=alpha, k=k)) <= TOL


@given(problem=problems(), beta=betas, sampler=st.sampled_from(["uniform", "ref"]))
def test_dpo_and_rlhf_minimisers_are_the_reference_tilted_by_rewards(problem, beta, sampler):
    """DPO at the population and RLHF: π ∝ π_ref·exp(r/β)."""
    target = oracle_policy(problem, loss="dpo", beta=beta, sampler=sampler)
    res = solve_exact(problem, loss="dpo", beta=beta, sampler=sampler)
    assert res.status == "converged" and _tv(res.policy, target) <= TOL
    rlhf = solve_rlhf(problem, beta=beta, sampler=sampler)
    assert rlhf.status == "converged" and _tv(rlhf.policy, target) <= TOL


@given(problem=problems(), tau=taus, sampler=st.sampled_from(["uniform", "ref"]), data=st.data())
def test_ipo_minimiser_is_the_laplacian_least_squares_solution(problem, tau, sampler, data):
    """IPO: g = log π − log π_ref solves g_i − g_j ≈ (2P_ij − 1)/(2τ), for BT and for any other preference."""
    pref = data.draw(st.one_of(st.none(), preferences(problem)))
    res = solve_exact(problem, loss="ipo", tau=tau, sampler=sampler, preference=pref)
    assert res.status == "converged"
    assert _tv(res.policy, oracle_policy(problem, loss="ipo", tau=tau, sampler=sampler, preference=pref)) <= TOL


@given(problem=problems(max_actions=4), beta=betas)
def test_hinge_minimiser_is_certified_by_a_dual_flow(problem, beta):
    """No closed form: the value at the returned policy equals the value of a feasible circulation (weak duality)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # ties make hinge minimisers non-unique
        res = solve_exact(problem, loss="hinge", beta=beta)
    assert res.converged and res.status in ("converged", "not_unique")
    # A vertex of a totally unimodular system: log-ratios to π_ref on multiples of 1/β.
    g = beta * (res.logits - problem.log_ref)
    g -= g[:, :1]
    np.testing.assert_allclose(g, np.round(g), rtol=0, atol=1e-9)
    cert = hinge_certificate(problem, beta, res.logits)
    assert cert["violation"] <= 1e-12
    assert abs(cert["primal"] - cert["dual"]) <= 1e-10
    with pytest.raises(ValueError, match="no closed-form"):
        oracle_policy(problem, loss="hinge", beta=beta)


@pytest.mark.parametrize("loss", ["cpo", "spo", "spo_best_of_n", "spo_ranked"])
@given(problem=problems(), data=st.data())
def test_losses_without_closed_form_stop_at_a_stationary_point(problem, data, loss):
    """CPO and the SPO variants with β > 0: the autograd gradient of the objective built from losses.py vanishes
    — or, where the KL term makes the objective nonconvex and Newton stalls (about 1.5% of random problems
    with β > 0, see test_solvers_zoo), the result says so with a ConvergenceWarning: never silently."""
    if loss == "cpo":
        params = {"beta": data.draw(betas), "lam": data.draw(lams)}
    else:
        params = {"alpha": data.draw(alphas), "beta": data.draw(floats(0.01, 5.0))}
        if loss != "spo":
            params["k"] = data.draw(st.integers(2, problem.n_actions))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_exact(problem, loss=loss, **params)
    event(f"{loss}: {res.status}")
    if res.status == "max_iter" and loss != "cpo":
        assert not res.converged and any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return
    assert res.status == "converged"
    assert stationarity(problem, loss, params, res.logits) <= 1e-10
    with pytest.raises(ValueError, match="no closed"):
        oracle_policy(problem, loss=loss, **params)
