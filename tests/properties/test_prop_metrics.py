"""Metrics (SPEC §7): KL ≥ 0 with equality iff the policies are equal; win_rate(π, π) = ½ and
win_rate(π, π') + win_rate(π', π) = 1 for any preference with P + Pᵀ = 1."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from spo_tabular.metrics import kl, tv, win_rate
from zoo_strategies import arrays, preferences, problems  # noqa: F401


def policies(m, n):
    return arrays((m, n), -8.0, 8.0).map(lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))


@given(data=st.data(), m=st.integers(1, 4), n=st.integers(2, 6))
def test_kl_is_nonnegative_and_zero_exactly_when_equal(data, m, n):
    """KL(p ‖ p) = 0; KL(p ‖ q) ≥ 2 TV(p, q)² (Pinsker) > 0 where the policies differ.

    Each term p·log(p/q) carries ~1e-16 absolute rounding (log of a rounded ratio), hence the 1e-15 slack.
    """
    p = data.draw(policies(m, n))
    q = data.draw(policies(m, n))
    assert np.all(kl(p, q) >= 0.0)
    np.testing.assert_array_equal(kl(p, p), 0.0)
    differ = tv(p, q) > 1e-6
    assert np.all(kl(p, q)[differ] >= 2 * tv(p, q)[differ] ** 2 - 1e-15 * n)
    assert np.all(kl(p, q)[differ] > 0)


@given(problem=problems(max_contexts=3, max_actions=6), data=st.data())
def test_win_rate_against_itself_is_half_and_swapping_sums_to_one(problem, data):
    """Σ π_i π'_j (P_ij + P_ji) = Σ π_i π'_j = 1, so WR(π, π') + WR(π', π) = 1 and WR(π, π) = ½."""
    m, n = problem.n_contexts, problem.n_actions
    pref = data.draw(st.one_of(st.none(), preferences(problem)))
    p, q = data.draw(policies(m, n)), data.draw(policies(m, n))
    assert abs(win_rate(problem, p, p, pref) - 0.5) <= 1e-12
    assert abs(win_rate(problem, p, q, pref) + win_rate(problem, q, p, pref) - 1.0) <= 1e-12
