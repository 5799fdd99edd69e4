"""Exact objectives of every loss (objectives.py, objectives_zoo.py): invariant to a per-context logit
shift, closed-form gradient and Hessian equal to autograd, and the Newton solver's policy does not
depend on the constant either."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spo_tabular import pair_mass
from spo_tabular.choice_sets import population_events
from spo_tabular.objectives import PairwiseObjective, SPOObjective, spo_margin
from spo_tabular.objectives_zoo import (ChoiceObjective, CPOObjective, dpo_objective, hinge_objective,
                                        ipo_objective)
from spo_tabular.solvers.exact import _newton, solve_exact
from zoo_strategies import alphas, arrays, betas, lams, problems, taus  # noqa: F401

KINDS = ("spo", "dpo", "ipo", "cpo", "best_of_n", "ranked", "hinge")


def build_with_params(kind, problem, data):
    """(objective, solve_exact keyword arguments) of the given kind on the population of `problem`."""
    W = pair_mass(problem)
    common = {"log_ref": problem.log_ref, "context_probs": problem.context_probs}
    if kind == "spo":
        p = {"alpha": data.draw(alphas), "beta": data.draw(st.sampled_from([0.0, 0.3]))}
        return SPOObjective(W, **p, **common), {"loss": "spo", **p}
    if kind == "dpo":
        p = {"beta": data.draw(betas)}
        return dpo_objective(W, **p, **common), {"loss": "dpo", **p}
    if kind == "ipo":
        p = {"tau": data.draw(taus)}
        return ipo_objective(W, **p, **common), {"loss": "ipo", **p}
    if kind == "cpo":
        p = {"beta": data.draw(betas), "lam": data.draw(lams)}
        return CPOObjective(W, **p, **common), {"loss": "cpo", **p}
    if kind == "hinge":
        p = {"beta": data.draw(betas)}
        return hinge_objective(W, **p, **common), {"loss": "hinge", **p}
    k = data.draw(st.integers(2, problem.n_actions))
    p = {"alpha": data.draw(alphas), "beta": data.draw(st.sampled_from([0.0, 0.3]))}
    events = population_events(problem, k, ranked=kind == "ranked")
    loss = "spo_ranked" if kind == "ranked" else "spo_best_of_n"
    return ChoiceObjective(events, **p, **common), {"loss": loss, "k": k, **p}


def build(kind, problem, data):
    """One objective of the given kind on the population of `problem`, parameters drawn from `data`."""
    return build_with_params(kind, problem, data)[0]


@pytest.mark.parametrize("kind", KINDS)
@given(problem=problems(), data=st.data())
def test_per_context_constant_changes_no_objective(problem, kind, data):
    """values and gradient at z + c·1 equal those at z (log π differences and log_softmax ignore c)."""
    obj = build(kind, problem, data)
    z = torch.from_numpy(data.draw(arrays((problem.n_contexts, problem.n_actions), -5, 5)))
    c = torch.from_numpy(data.draw(arrays((problem.n_contexts, 1), -30, 30)))
    torch.testing.assert_close(obj.values(z + c), obj.values(z), rtol=1e-10, atol=1e-12)
    if kind != "hinge":
        torch.testing.assert_close(obj.grad(z + c), obj.grad(z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS[:-1])
@given(problem=problems(), data=st.data())
def test_closed_form_gradient_and_hessian_equal_autograd(problem, kind, data):
    """∇L and ∇²L of every smooth objective agree with torch.autograd on its `values`."""
    obj = build(kind, problem, data)
    values = obj.values
    if kind == "spo":
        # SPOObjective's values use F.softplus, which turns linear above |x| = 20 (dropping ~2e-9), so
        # its autograd Hessian is wrong there; differentiate the generic logsigmoid form instead.
        values = PairwiseObjective(obj.W, spo_margin(float(obj.alpha[0])), beta=float(obj.beta[0]),
                                   log_ref=problem.log_ref, context_probs=problem.context_probs).values
    z0 = torch.from_numpy(data.draw(arrays((problem.n_contexts, problem.n_actions), -5, 5)))
    z = z0.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(values(z).sum(), z, create_graph=True)
    m, n = z0.shape
    rows = [torch.autograd.grad(g_auto[x, i], z, retain_graph=True)[0][x] for x in range(m) for i in range(n)]
    H_auto = torch.stack(rows).reshape(m, n, n)
    g, H = obj.grad_hess(z0)
    scale = float(obj.context_mass().max())
    torch.testing.assert_close(g, g_auto.detach(), rtol=1e-9, atol=1e-12 * scale)
    torch.testing.assert_close(obj.grad(z0), g, rtol=1e-12, atol=1e-14 * scale)
    torch.testing.assert_close(H, H_auto.detach(), rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("kind", KINDS[:-1])
@given(problem=problems(), data=st.data())
def test_per_context_constant_on_the_start_changes_no_policy(problem, kind, data):
    """Newton from z0 and from z0 + c·1 reaches the same policy softmax(z*).

    z0 is drawn near the minimiser: from far away, where σ(αd) saturates, the Hessian is ~1e-21 and the
    undamped Newton direction overshoots by ~1e19 (the solvers start from the log-odds fit for this reason).
    """
    obj, params = build_with_params(kind, problem, data)
    z_star = torch.from_numpy(solve_exact(problem, **params).logits)
    z0 = z_star + torch.from_numpy(data.draw(arrays((problem.n_contexts, problem.n_actions), -0.5, 0.5)))
    c = torch.from_numpy(data.draw(arrays((problem.n_contexts, 1), -30, 30)))
    za, *_, ok_a, _ = _newton(obj, z0, tol=1e-12, max_iter=200)
    zb, *_, ok_b, _ = _newton(obj, z0 + c, tol=1e-12, max_iter=200)
    assert ok_a and ok_b
    torch.testing.assert_close(torch.softmax(zb, -1), torch.softmax(za, -1), rtol=0, atol=1e-9)
