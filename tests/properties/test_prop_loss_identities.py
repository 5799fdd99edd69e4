"""Loss identities (SPEC §4): antisymmetry, best-of-2 = ranked-2 = pairwise, ranked = Σ best-of-n over
suffixes, DPO with a uniform reference = β · SPO(α = β), and invariance to a per-context logit shift."""
import itertools

import torch
from hypothesis import given
from hypothesis import strategies as st

from spo_tabular.losses import (cpo_loss, dpo_loss, hinge_loss, ipo_loss, spo_best_of_n_loss, spo_loss,
                                spo_ranked_loss)
from zoo_strategies import alphas, arrays, betas, lams, logps, taus  # noqa: F401


@given(a=logps((16,)), b=logps((16,)), alpha=alphas)
def test_spo_loss_minus_its_swap_is_minus_the_margin(a, b, alpha):
    """log σ(t) − log σ(−t) = t, so spo(a, b) − spo(b, a) = −(a − b) for every α."""
    lhs = spo_loss(a, b, alpha=alpha) - spo_loss(b, a, alpha=alpha)
    torch.testing.assert_close(lhs, -(a - b), rtol=0, atol=1e-12 * (1 + float((a - b).abs().max())))


@given(a=logps((16,)), b=logps((16,)), alpha=alphas)
def test_best_of_two_and_ranked_two_equal_pairwise(a, b, alpha):
    """With k = 2 the best-of-n and ranked losses are the pairwise SPO loss (chosen = column 0)."""
    pair = spo_loss(a, b, alpha=alpha)
    stacked = torch.stack((a, b), dim=1)
    torch.testing.assert_close(spo_best_of_n_loss(stacked, torch.zeros(16, dtype=torch.long), alpha=alpha),
                               pair, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(spo_ranked_loss(stacked, alpha=alpha), pair, rtol=1e-12, atol=1e-12)
    # The best may sit in any column: best = 1 with the columns swapped is the same comparison.
    torch.testing.assert_close(spo_best_of_n_loss(stacked.flip(1), torch.ones(16, dtype=torch.long), alpha=alpha),
                               pair, rtol=1e-12, atol=1e-12)


@given(data=st.data(), alpha=alphas)
def test_ranked_equals_sum_of_best_of_n_over_suffixes(data, alpha):
    """A Plackett–Luce ranking is k − 1 successive choices: ranked(l) = Σ_t best_of_n(l[t:], best=0)."""
    k = data.draw(st.integers(2, 6))
    lp = data.draw(logps((8, k)))
    suffixes = sum(spo_best_of_n_loss(lp[:, t:], torch.zeros(8, dtype=torch.long), alpha=alpha)
                   for t in range(k - 1))
    torch.testing.assert_close(spo_ranked_loss(lp, alpha=alpha), suffixes, rtol=1e-12, atol=1e-11)


@given(a=logps((16,)), b=logps((16,)), ref=logps((16,)), beta=betas)
def test_dpo_with_uniform_reference_is_beta_times_spo(a, b, ref, beta):
    """ref_chosen = ref_rejected ⇒ h = logp_w − logp_l, and −log σ(βh) = β · [−(1/β) log σ(βh)]."""
    torch.testing.assert_close(dpo_loss(a, b, ref, ref, beta=beta), beta * spo_loss(a, b, alpha=beta),
                               rtol=1e-12, atol=1e-12)


@given(data=st.data(), alpha=alphas, beta=betas, tau=taus, lam=lams)
def test_per_context_constant_on_logits_changes_no_loss(data, alpha, beta, tau, lam):
    """Every loss depends on logits only through within-context differences (CPO through log_softmax)."""
    m, n = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 5))
    z = torch.from_numpy(data.draw(arrays((m, n), -10, 10)))
    c = torch.from_numpy(data.draw(arrays((m, 1), -50, 50)))
    ref = torch.log_softmax(torch.from_numpy(data.draw(arrays((m, n), -2, 2))), dim=1)
    x, i, j = (torch.tensor(t) for t in zip(*[(x, i, j) for x in range(m) for i in range(n) for j in range(n)
                                               if i != j]))
    atol = 1e-10

    def pairwise(zz):
        lp = torch.log_softmax(zz, dim=1)
        return [spo_loss(zz[x, i], zz[x, j], alpha=alpha),
                dpo_loss(zz[x, i], zz[x, j], ref[x, i], ref[x, j], beta=beta),
                ipo_loss(zz[x, i], zz[x, j], ref[x, i], ref[x, j], tau=tau),
                hinge_loss(zz[x, i], zz[x, j], ref[x, i], ref[x, j], beta=beta),
                cpo_loss(lp[x, i], lp[x, j], beta=beta, lam=lam)]

    for before, after in zip(pairwise(z), pairwise(z + c)):
        torch.testing.assert_close(after, before, rtol=0, atol=atol)
    k = data.draw(st.integers(2, n))
    sets = torch.tensor(list(itertools.combinations(range(n), k)))               # (S, k)
    for xx in range(m):
        best = torch.zeros(sets.shape[0], dtype=torch.long)
        for fn in (lambda l: spo_best_of_n_loss(l, best, alpha=alpha), lambda l: spo_ranked_loss(l, alpha=alpha)):
            torch.testing.assert_close(fn((z + c)[xx][sets]), fn(z[xx][sets]), rtol=0, atol=atol)
