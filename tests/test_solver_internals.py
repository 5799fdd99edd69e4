"""The exact solver's machinery: the convexity bound behind value-free steps, parallel row blocks,
the reused work buffers, lazy subsets and the in-buffer objective values."""
import multiprocessing
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spo_tabular import TabularProblem, make_problem, pair_mass, sample_pairs, solve_exact
from spo_tabular.preferences import bradley_terry, pair_probs
from spo_tabular.objectives import SPOObjective
from spo_tabular.objectives_zoo import dpo_objective, ipo_objective
from spo_tabular.solvers import exact as ex


def objective(m, n, seed, alpha=0.7, beta=0.1, ref="dirichlet"):
    p = make_problem(m, n, seed=seed, ref=ref)
    return SPOObjective(pair_mass(p), alpha=alpha, beta=beta, log_ref=p.log_ref,
                        context_probs=p.context_probs)


@pytest.fixture
def two_threads():
    """torch at two threads (the tests run at one), so the solver splits its batches into row blocks."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@settings(max_examples=40)
@given(m=st.integers(1, 5), n=st.integers(2, 8), seed=st.integers(0, 2**31 - 1),
       alpha=st.floats(0.05, 10.0), beta=st.floats(0.0, 10.0), step=st.floats(0.01, 5.0))
def test_end_slope_bound_is_an_upper_bound_on_the_change(m, n, seed, alpha, beta, step):
    # The solver takes a step without objective values when ∇P(z+d)·d + N(z+d) − N(z) meets Armijo;
    # that is sound only if the bound is ≥ the true change L(z+d) − L(z) (convexity of P).
    obj = objective(m, n, seed, alpha=alpha, beta=beta)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(m, n, generator=gen, dtype=torch.float64)
    d = step * torch.randn(m, n, generator=gen, dtype=torch.float64)
    g_new, _, gn_new, fn_new = obj.split_derivatives(z + d)
    bound = ((g_new - gn_new) * d).sum(dim=1) + fn_new - obj.nonconvex_values(z)
    change = obj.values(z + d) - obj.values(z)
    slack = 1e-12 * (obj.values(z).abs() + obj.values(z + d).abs())
    assert bool((change <= bound + slack).all())


def test_split_derivatives_agree_with_autograd():
    obj = objective(3, 5, seed=4, beta=0.8)
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g, H, gn, fn = obj.split_derivatives(z)
    g_auto = torch.autograd.functional.jacobian(lambda x: obj.values(x).sum(), z)
    H_auto = torch.autograd.functional.hessian(lambda x: obj.values(x).sum(), z)
    assert torch.allclose(g, g_auto, atol=1e-14, rtol=1e-12)
    for x in range(3):
        assert torch.allclose(H[x], H_auto[x, :, x, :], atol=1e-13, rtol=1e-11)
    kl_auto = torch.autograd.functional.jacobian(lambda x: obj.nonconvex_values(x).sum(), z)
    assert torch.allclose(gn, kl_auto, atol=1e-15, rtol=1e-12)
    assert torch.allclose(fn, obj.nonconvex_values(z), rtol=1e-15, atol=0)
    # the same four outputs when computed in caller-supplied buffers
    work = (torch.empty(3, 5, 5, dtype=torch.float64), torch.empty(3, 5, 5, dtype=torch.float64))
    for a, b in zip(obj.split_derivatives(z, out=work), (g, H, gn, fn)):
        assert torch.equal(a, b)


def numpy_objective(problem, W, z, alpha, beta):
    """Per-context SPO objective in numpy, written independently: log σ(x) = −logaddexp(0, −x)."""
    z = np.asarray(z, dtype=np.float64)
    d = alpha * (z[:, :, None] - z[:, None, :])
    pref = (W * np.logaddexp(0.0, -d)).sum(axis=(1, 2)) / alpha
    logp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    kl = (np.exp(logp) * (logp - problem.log_ref)).sum(axis=1)
    return pref + beta * problem.context_probs * kl


@pytest.mark.parametrize("scale", [1.0, 40.0, 1e3])
def test_values_in_buffers_match_an_independent_log_sigmoid(scale):
    # The fused log-sigmoid written over its own input in the buffers, against numpy's logaddexp,
    # including margins where σ underflows.
    p = make_problem(4, 6, seed=2, ref="dirichlet")
    W = pair_mass(p)
    obj = SPOObjective(W, alpha=0.7, beta=0.1, log_ref=p.log_ref, context_probs=p.context_probs)
    z = scale * torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    work = (torch.empty(4, 6, 6, dtype=torch.float64), torch.empty(4, 6, 6, dtype=torch.float64))
    want = numpy_objective(p, W, z.numpy(), 0.7, 0.1)
    np.testing.assert_allclose(obj.values(z, out=work).numpy(), want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(obj.values(z).numpy(), want, rtol=1e-13, atol=0)


def test_log_odds_system_by_hand_per_context_floor_and_buffers():
    # Context 0: two actions, action 0 beat action 1 three times and never lost (mass 3/N one way).
    # Haldane adds half the context's smallest mass (f = 1.5/N) both ways: b_0 = c_01 log((3 + 1.5)/1.5)
    # = (3/N) log 3 = −b_1. Context 1 holds masses a million times larger; its own floor must not
    # change context 0 (the start of a row block cannot depend on the other blocks).
    N = 1e6
    W = torch.zeros(2, 3, 3, dtype=torch.float64)
    W[0, 0, 1] = 3 / N
    W[1] = torch.tensor([[0.0, 0.2, 0.1], [0.05, 0.0, 0.3], [0.0, 0.25, 0.0]])
    c, b = ex._log_odds_system(W.clone(), complete=False)
    assert torch.allclose(b[0], torch.tensor([3 / N * np.log(3), -3 / N * np.log(3), 0.0], dtype=torch.float64),
                          rtol=1e-14, atol=0)
    assert torch.equal(c, W + W.mT)
    for x in range(2):
        c_x, b_x = ex._log_odds_system(W[x:x + 1].clone(), complete=False)
        assert torch.equal(b_x[0], b[x]) and torch.equal(c_x[0], c[x])
    work = (torch.empty(2, 3, 3, dtype=torch.float64), torch.empty(2, 3, 3, dtype=torch.float64))
    c_w, b_w = ex._log_odds_system(W, complete=False, out=work)
    assert c_w.data_ptr() == work[0].data_ptr()
    assert torch.equal(c_w, c) and torch.allclose(b_w, b, rtol=1e-15, atol=0)


def test_direction_in_row_blocks_equals_one_block(two_threads):
    obj = objective(300, 12, seed=5, beta=0.3)
    z = torch.randn(300, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    g, H = obj.grad_hess(z)
    assert len(ex._by_row_blocks(lambda a: a, H)) == 2            # really split at two threads
    d_blocks = ex._newton_direction(g, H.clone())
    torch.set_num_threads(1)
    d_one = ex._newton_direction(g, H.clone())
    assert torch.equal(d_blocks, d_one)


def test_indefinite_rows_fall_back_to_saddle_free_newton(two_threads):
    # Rows whose matrix is not positive definite (numpy raises for its whole block) get |H|⁻¹:
    # still a descent direction; the positive definite rows keep their exact Newton step.
    gen = torch.Generator().manual_seed(7)
    m, n = 300, 6
    B = torch.randn(m, n, n, generator=gen, dtype=torch.float64)
    H = B @ B.mT + n * torch.eye(n, dtype=torch.float64)
    H[5] = torch.diag(torch.tensor([3.0, -2.0, 1.0, 4.0, -1.0, 2.0], dtype=torch.float64))
    g = torch.randn(m, n, generator=gen, dtype=torch.float64)
    g -= g.mean(dim=1, keepdim=True)
    d = ex._newton_direction(g, H.clone())
    assert bool(((g * d).sum(dim=1) < 0).all())
    gauge = torch.diagonal(H[0]).abs().mean() / n
    exact = torch.linalg.solve(H[0] + gauge, -g[0])
    assert torch.allclose(d[0], exact - exact.mean(), atol=1e-12)
    lam, U = torch.linalg.eigh(H[5] + torch.diagonal(H[5]).abs().mean() / n)
    saddle_free = -(U @ ((U.T @ g[5]) / lam.abs()))
    assert torch.allclose(d[5], saddle_free - saddle_free.mean(), atol=1e-12)


def test_lazy_subset_copies_w_only_when_needed():
    obj = objective(10, 5, seed=8)
    keep = torch.zeros(10, dtype=torch.bool)
    keep[[1, 4, 7]] = True
    sub = obj.subset(keep)
    assert sub.__dict__["_W"] is None                              # not copied yet
    z = torch.randn(10, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.equal(sub.values(z[keep]), obj.values(z)[keep])
    assert torch.equal(sub.W, obj.W[keep])
    nested = sub.subset(torch.tensor([False, True, True]))
    assert torch.equal(nested.values(z[[4, 7]]), obj.values(z)[[4, 7]])


def test_work_buffers_are_reused_and_large_ones_are_not_kept():
    a = ex._grid_work(2, 16, 8)
    b = ex._grid_work(2, 8, 8)
    assert a[0].data_ptr() == b[0].data_ptr()                      # the cached block, reused
    assert a[0].shape == (16, 8, 8) and b[1].shape == (8, 8, 8)
    assert a[1].data_ptr() == a[0].data_ptr() + 16 * 8 * 8 * 8     # disjoint halves
    cached = ex._WORK.slots["work"]
    big = ex._grid_work(2, 1, int(np.sqrt(ex._WORK_CACHE_BYTES / 8)) + 1)
    assert ex._WORK.slots["work"] is cached and big[0].data_ptr() != cached.data_ptr()
    other = ex._grid_work(2, 16, 8, slot="objective")                # slots never share memory
    assert other[0].data_ptr() != a[0].data_ptr() and ex._grid_work(2, 16, 8)[0].data_ptr() == a[0].data_ptr()


def test_objective_grids_are_reused_and_a_nested_solve_gets_fresh_ones():
    with ex._objective_grids(8, 5) as (w1, s1):
        with ex._objective_grids(8, 5) as inner:
            assert inner == (None, None)          # held by the outer solve: fresh arrays instead
    with ex._objective_grids(8, 5) as (w2, s2):
        assert (w2.data_ptr(), s2.data_ptr()) == (w1.data_ptr(), s1.data_ptr())
        assert w2.shape == s2.shape == (8, 5, 5) and s2.data_ptr() == w2.data_ptr() + 8 * 5 * 5 * 8


def test_solves_in_the_reused_buffers_match_fresh_arrays_and_leave_no_trace():
    # A solve with the cached W / α(W + Wᵀ) buffers against the same objective built on fresh arrays
    # (the numpy objective is independent of the buffers); a second, different problem in between
    # must not leak into the first one's answer.
    p1, p2 = make_problem(12, 6, seed=3, ref="dirichlet"), make_problem(12, 6, seed=4, ref="dirichlet")
    first = solve_exact(p1, alpha=0.8, beta=0.3)
    solve_exact(p2, alpha=0.5, beta=0.0)
    again = solve_exact(p1, alpha=0.8, beta=0.3)
    assert np.array_equal(first.logits, again.logits) and first.loss == again.loss
    z = torch.tensor(first.logits)
    assert first.loss == pytest.approx(numpy_objective(p1, pair_mass(p1), first.logits, 0.8, 0.3).sum(), rel=1e-12)
    obj = SPOObjective(pair_mass(p1), alpha=0.8, beta=0.3, log_ref=p1.log_ref, context_probs=p1.context_probs)
    assert float(obj.grad(z).abs().max()) < 1e-12


def test_pair_mass_into_a_buffer_matches_pair_mass():
    from spo_tabular.preferences import _pair_mass
    p = make_problem(5, 4, seed=1, ref="dirichlet")
    P = bradley_terry(p.rewards)
    P[1, 0, 2], P[1, 2, 0] = 1.0, 0.0
    for sampler, pref in (("uniform", None), ("ref", None), ("uniform", P), (pair_probs(p, "ref"), P)):
        full = pair_mass(p, sampler=sampler, preference=pref)
        out = np.full((5, 4, 4), np.nan)
        got = _pair_mass(p, sampler, pref, out=out)
        assert got is out or np.shares_memory(got, out)
        np.testing.assert_array_equal(out, full)
        for rows in (slice(0, 2), slice(2, 5), slice(4, 5)):            # row blocks, as the solver fills W
            out = np.full((rows.stop - rows.start, 4, 4), np.nan)
            _pair_mass(p, sampler, pref, out=out, rows=rows)
            np.testing.assert_array_equal(out, full[rows])


def test_cholesky_into_the_reused_buffer_or_in_place_and_failed_rows_flagged():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 5, 5))
    A = torch.tensor(B @ B.transpose(0, 2, 1) + 5 * np.eye(5))
    A[2] = -A[2]                                   # one indefinite matrix
    L, bad = ex._cholesky_block(A)
    assert bad.tolist() == [False, False, True, False, False, False]
    assert L.data_ptr() == ex._grid_work(1, 6, 5, slot="cholesky")[0].data_ptr()
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_allclose((L[i] @ L[i].T).numpy(), A[i].numpy(), rtol=1e-13, atol=1e-13)
    C = A.clone()
    L2, bad2 = ex._cholesky_block(C, in_place=True)
    assert L2.data_ptr() == C.data_ptr() and bad2.tolist() == bad.tolist()
    np.testing.assert_array_equal(L2[[0, 1, 3, 4, 5]].numpy(), L[[0, 1, 3, 4, 5]].numpy())


def test_newton_direction_in_place_rebuilds_the_rows_that_need_the_saddle_free_step():
    # Factoring in place loses the indefinite rows; `rebuild` hands them back and the saddle-free
    # step comes out the same as from the intact matrices. Checked against |H|⁻¹ by eigh.
    rng = np.random.default_rng(1)
    n = 6
    B = rng.normal(size=(5, n, n))
    H = B @ B.transpose(0, 2, 1) + np.eye(n)
    H[[1, 3]] -= 4 * np.eye(n)                     # two indefinite rows
    g = rng.normal(size=(5, n))
    g -= g.mean(axis=1, keepdims=True)
    Ht, gt = torch.tensor(H), torch.tensor(g)
    want = ex._newton_direction(gt, Ht.clone())
    asked = []
    got = ex._newton_direction(gt, Ht.clone(), rebuild=lambda rows: (asked.append(rows.tolist()), Ht[rows].clone())[1])
    assert asked == [[False, True, False, True, False]]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-14)
    scale = np.abs(np.diagonal(H, axis1=1, axis2=2)).mean(axis=1)
    for i in range(5):
        lam, U = np.linalg.eigh(H[i] + scale[i] / n)
        d = -U @ ((U.T @ g[i]) / np.abs(lam))
        np.testing.assert_allclose(got[i].numpy(), d - d.mean(), rtol=1e-10, atol=1e-12)


def test_concurrent_solves_in_threads_match_sequential():
    # Each thread has its own work buffers: two solves at once must not see each other's numbers.
    problems = [make_problem(24, 10, seed=s, ref="dirichlet") for s in (1, 2)]
    expected = [solve_exact(p, alpha=0.7, beta=0.2).logits for p in problems]
    out = [None, None]

    def run(i):
        for _ in range(3):
            out[i] = solve_exact(problems[i], alpha=0.7, beta=0.2).logits

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(got, want)


def _direction_in_child(queue, g, H):
    # torch's own OpenMP threads do not survive a fork (a forked child that uses two torch threads
    # hangs inside libgomp, with or without this package), so the child keeps torch at one thread and
    # only the row-block decision is told "two threads": the work then goes to the solver's pool.
    torch.get_num_threads = lambda: 2
    queue.put(ex._newton_direction(g, H).numpy())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_row_block_pool_survives_fork(two_threads):
    # A forked child inherits the pool object but none of its threads; it must make a new pool
    # (a stale one would never run the child's share of a parallel factorisation).
    obj = objective(256, 8, seed=3)          # two row blocks of 128: the parent starts the pool itself
    g, H = obj.grad_hess(torch.randn(256, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    want = ex._newton_direction(g, H.clone()).numpy()
    assert ex._POOL is not None
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_direction_in_child, args=(queue, g, H.clone()))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("beta, kind", [(0.3, "population"), (0.0, "data"), (0.3, "ref"),
                                        (0.0, "preference"), (0.2, "weights")])
def test_solve_in_parallel_row_blocks_matches_one_thread(two_threads, beta, kind):
    # At two torch threads the contexts are solved in two blocks on the pool (W, α(W + Wᵀ), start
    # and Newton per block); at one thread in one piece. Same minimiser, same status.
    p = make_problem(300, 9, seed=11, ref="dirichlet", reward_scale=0.5)
    rng = np.random.default_rng(2)
    kw = {"data": {"data": sample_pairs(p, 400_000, seed=1)}, "ref": {"sampler": "ref"},
          "population": {}, "weights": {"weights": rng.uniform(0.5, 2.0, size=(300, 9, 9))}}.get(kind)
    if kind == "preference":                  # a non-Bradley–Terry expert: P_ij = 0.5 + 0.4·tanh(r_i − r_j)
        r = p.rewards
        kw = {"preference": 0.5 + 0.4 * np.tanh(r[:, :, None] - r[:, None, :])}
    assert ex._n_blocks(p.n_contexts) == 2
    blocks = solve_exact(p, alpha=0.8, beta=beta, **kw)
    torch.set_num_threads(1)
    one = solve_exact(p, alpha=0.8, beta=beta, **kw)
    assert blocks.status == one.status == "converged"
    np.testing.assert_allclose(blocks.logits, one.logits, rtol=0, atol=1e-12)
    assert abs(blocks.loss - one.loss) <= 1e-14 * abs(one.loss)
    # the loss the blocks computed in parallel is the objective at the returned logits
    W = kw["data"].pair_mass() if kind == "data" else \
        pair_mass(p, sampler=kw.get("sampler", "uniform"), preference=kw.get("preference")) * kw.get("weights", 1.0)
    assert blocks.loss == pytest.approx(numpy_objective(p, W, blocks.logits, 0.8, beta).sum(), rel=1e-13)


def test_pool_workers_run_torch_at_one_thread_and_leave_the_default_alone(two_threads):
    pool = ex._pool(2)
    assert {f.result() for f in [pool.submit(torch.get_num_threads) for _ in range(6)]} == {1}
    assert torch.get_num_threads() == 2
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [2]                     # threads started later still get the caller's setting
    assert ex._n_blocks(10_000) == 2
    assert pool.submit(ex._n_blocks, 10_000).result() == 1    # no nested splitting inside a worker


def test_log1p_exp_matches_logaddexp_across_overflow_and_underflow():
    # log(1 + e^y) in place: exp-then-log1p below y = 700, the stable form above (e^y overflows
    # past 709.78); numpy's logaddexp(0, y) is the independent reference.
    from spo_tabular.objectives import _log1p_exp
    y = np.concatenate([np.linspace(-800.0, 40.0, 2001), [-np.inf, 0.0, 699.9, 700.0]])
    got = _log1p_exp(y.copy())
    np.testing.assert_allclose(got, np.logaddexp(0.0, y), rtol=4e-16, atol=1e-300)
    big = np.array([[650.0, 701.0], [710.0, 1e4]])       # any entry above 700: the stable branch
    np.testing.assert_allclose(_log1p_exp(big.copy()), np.logaddexp(0.0, big), rtol=4e-16, atol=0)
    out = np.array([1.0, -3.0])
    assert _log1p_exp(out) is out                            # in place


@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_uniform_shown_objective_matches_the_grid_of_shown_mass(beta):
    # The uniform sampler shows every pair equally for any preference model (P + Pᵀ = 1), so
    # α(W + Wᵀ) may be one number per context; derivatives, values, rows and subsets must match
    # the objective that keeps the grid. A non-Bradley–Terry expert makes W itself unstructured.
    p = make_problem(7, 6, seed=5, ref="dirichlet")
    P = 0.5 + 0.45 * np.tanh(p.rewards[:, :, None] - p.rewards[:, None, :]) ** 3
    W = pair_mass(p, preference=P)
    kw = dict(alpha=0.6, beta=beta, log_ref=p.log_ref, context_probs=p.context_probs)
    grid, flat = SPOObjective(W, **kw), SPOObjective(W, uniform_shown=True, **kw)
    assert flat.S_alpha is None and flat.shown_alpha.shape == (7,)
    np.testing.assert_allclose(flat.shown_alpha.numpy(), grid.S_alpha[:, 0, 1].numpy(), rtol=1e-14)
    z = 3.0 * torch.randn(7, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    work = (torch.empty(7, 6, 6, dtype=torch.float64), torch.empty(7, 6, 6, dtype=torch.float64))
    for a, b in zip(flat.split_derivatives(z, out=work), grid.split_derivatives(z)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-17)
    torch.testing.assert_close(flat.preference_grad(z), grid.preference_grad(z), rtol=1e-13, atol=1e-17)
    keep = torch.tensor([True, False, True, True, False, False, True])
    for a, b in ((flat.subset(keep), grid.subset(keep)), (flat.rows(2, 5), grid.rows(2, 5))):
        zz = z[keep] if a.n_contexts == 4 else z[2:5]
        for x, y in zip(a.grad_hess(zz), b.grad_hess(zz)):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-17)
    # the solver uses it for the uniform sampler: same minimiser as a solve on an explicit q
    q = np.full((7, 6, 6), 1.0 / 30.0)
    q[:, np.arange(6), np.arange(6)] = 0.0
    a = solve_exact(p, alpha=0.6, beta=beta, preference=P)
    b = solve_exact(p, alpha=0.6, beta=beta, preference=P, sampler=q)
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-11)
    assert a.loss == pytest.approx(b.loss, rel=1e-13)


def test_retirement_copies_go_to_two_alternating_slots():
    obj = objective(12, 5, seed=6)
    keep1 = torch.arange(12) % 3 != 0
    buf1 = ex._retire_grid(obj.S_alpha, int(keep1.sum()))
    sub1 = obj.subset(keep1, out_grid=buf1)
    assert torch.equal(sub1.S_alpha, obj.S_alpha[keep1]) and sub1.S_alpha.data_ptr() == buf1.data_ptr()
    keep2 = torch.tensor([True, False] * 4)
    buf2 = ex._retire_grid(sub1.S_alpha, 4)                # the source's slot is skipped
    assert buf2.untyped_storage().data_ptr() != buf1.untyped_storage().data_ptr()
    sub2 = sub1.subset(keep2, out_grid=buf2)
    assert torch.equal(sub2.S_alpha, obj.S_alpha[keep1][keep2])
    buf3 = ex._retire_grid(sub2.S_alpha, 2)                 # and back to the first slot
    assert buf3.untyped_storage().data_ptr() == buf1.untyped_storage().data_ptr()


def test_float32_twin_has_the_same_derivatives_to_single_precision():
    obj = objective(6, 12, seed=3, beta=0.5)
    low = obj.astype(torch.float32)
    assert low.log_ref.dtype == torch.float32 and low.W.dtype == torch.float64   # W (values) stays
    z = 2.0 * torch.randn(6, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for a, b in zip(low.split_derivatives(z.float()), obj.split_derivatives(z)):
        assert a.dtype == torch.float32
        scale = float(b.abs().max())
        assert float((a.double() - b).abs().max()) <= 1e-6 * scale


def test_float32_cholesky_into_buffers_and_failed_rows_flagged():
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(4, 7, 7, generator=gen, dtype=torch.float32)
    A = X @ X.mT + 7 * torch.eye(7)
    A[2] = -A[2]                                              # not positive definite
    L, bad = ex._cholesky_block(A.clone())
    assert L.dtype == torch.float32 and bad.tolist() == [False, False, True, False]
    ok = [0, 1, 3]
    np.testing.assert_allclose(L[ok].numpy(), np.linalg.cholesky(A[ok].numpy()), rtol=1e-5, atol=1e-5)
    d, bad2 = ex._cholesky_step_block(A[ok].clone(), torch.ones(3, 7, dtype=torch.float64), in_place=True)
    want = -np.linalg.solve(A[ok].double().numpy(), np.ones((3, 7, 1)))[..., 0]
    assert d.dtype == torch.float32
    np.testing.assert_allclose(d.numpy(), want, rtol=1e-4, atol=1e-6)
    assert not bool(bad2.any())


def test_float32_work_buffers_share_the_cached_storage():
    a = ex._grid_work(2, 16, 8, slot="lowp", dtype=torch.float32)
    b = ex._grid_work(2, 16, 8, slot="lowp", dtype=torch.float32)
    assert a[0].dtype == torch.float32 and a[0].shape == (16, 8, 8)
    assert a[0].data_ptr() == b[0].data_ptr() and a[1].data_ptr() == a[0].data_ptr() + 16 * 8 * 8 * 4
    c = ex._grid_work(1, 16, 8, slot="lowp")                  # the same slot, as float64
    assert c[0].dtype == torch.float64 and c[0].untyped_storage().data_ptr() == a[0].untyped_storage().data_ptr()


def test_newton_with_a_float32_twin_reaches_the_float64_minimiser(monkeypatch):
    # The early iterations in float32, the last ones (and the convergence test) in float64: the
    # same minimiser as an all-float64 Newton, to the float64 tolerance.
    obj = objective(40, 20, seed=6, beta=0.3)
    z0 = torch.randn(40, 20, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    precisions = []
    real = ex._derivatives

    def spy(o, z, work=None, lowp=None):
        precisions.append("f32" if lowp is not None else "f64")
        return real(o, z, work, lowp)

    monkeypatch.setattr(ex, "_derivatives", spy)
    z64, g64, _, ok64, err64 = ex._newton(obj, z0, tol=1e-12, max_iter=100)
    assert set(precisions) == {"f64"}
    precisions.clear()
    z32, g32, _, ok32, err32 = ex._newton(obj, z0, tol=1e-12, max_iter=100, lowp=obj.astype(torch.float32))
    assert ok64 and ok32 and err32 <= 1e-12
    assert precisions[0] == "f32" and precisions[-1] == "f64" and "f32" not in precisions[precisions.index("f64"):]
    p64, p32 = torch.softmax(z64, -1), torch.softmax(z32, -1)
    assert float((p64 - p32).abs().sum(-1).max()) <= 1e-12
    assert float(obj.grad(z32).abs().max()) <= 1e-14


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_gradient_and_hessian_diagonal_without_the_hessian(uniform, beta):
    p = make_problem(5, 7, seed=8, ref="dirichlet")
    obj = SPOObjective(pair_mass(p, sampler="uniform" if uniform else "ref"), alpha=0.9, beta=beta,
                       log_ref=p.log_ref, context_probs=p.context_probs, uniform_shown=uniform)
    z = 2.0 * torch.randn(5, 7, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    g, H = obj.grad_hess(z)
    g2, diag = obj.grad_hess_diag(z)
    torch.testing.assert_close(g2, g, rtol=1e-13, atol=1e-18)
    torch.testing.assert_close(diag, torch.diagonal(H, dim1=1, dim2=2), rtol=1e-13, atol=1e-18)


def test_newton_checks_an_exact_start_without_the_hessian_and_falls_back_when_it_is_not(monkeypatch):
    obj = objective(6, 8, seed=10, beta=0.0, ref="uniform")
    calls, real = [], SPOObjective.split_derivatives
    monkeypatch.setattr(SPOObjective, "split_derivatives", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    z_star = torch.tensor(solve_exact(make_problem(6, 8, seed=10), alpha=0.7).logits)
    z, gmax, n_iter, ok, err = ex._newton(obj, z_star, tol=1e-12, max_iter=50, check_start=True)
    assert ok and n_iter == 0 and not calls and torch.equal(z, z_star) and err <= 1e-12 / 16
    z0 = z_star + 0.3 * torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, gmax, n_iter, ok, err = ex._newton(obj, z0, tol=1e-12, max_iter=50, check_start=True)
    assert ok and n_iter > 0 and calls and float((torch.softmax(z, -1) - torch.softmax(z_star, -1)).abs().max()) < 1e-12


def test_zero_diagonal_in_place_for_contiguous_and_strided_arrays():
    from spo_tabular.preferences import _zero_diagonal
    a = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4) + 1.0
    want = a.copy()
    want[:, np.arange(4), np.arange(4)] = 0.0
    np.testing.assert_array_equal(_zero_diagonal(a.copy()), want)
    t = a.transpose(0, 2, 1).copy().transpose(0, 2, 1)        # same values, not C-contiguous
    assert not t.flags.c_contiguous
    np.testing.assert_array_equal(_zero_diagonal(t), want)


@pytest.mark.parametrize("n, low", [(20, True), (8, False)])
def test_solve_exact_takes_its_early_steps_in_float32_only_where_it_pays(monkeypatch, n, low):
    seen, real = [], ex._derivatives
    monkeypatch.setattr(ex, "_derivatives", lambda o, z, work=None, lowp=None: seen.append(lowp is not None)
                        or real(o, z, work, lowp))
    p = make_problem(30, n, seed=3, ref="dirichlet")
    r = solve_exact(p, alpha=0.7, beta=0.2)
    assert r.converged and any(seen) == low and seen[-1] is False
    monkeypatch.setattr(ex, "_LOWP_MAX_GRID", 30 * n * n - 1)      # a grid over the limit: float64 only
    before = len(seen)
    again = solve_exact(p, alpha=0.7, beta=0.2)
    assert again.converged and len(seen) > before and not any(seen[before:])
    np.testing.assert_allclose(again.logits, r.logits, rtol=0, atol=1e-11)


def test_float32_steps_stop_once_three_quarters_of_the_contexts_are_near_the_float32_floor(monkeypatch):
    # Float32 steps stall near a scaled gradient of 1e-6. Here (α = 0.3, β = 1) a few slow contexts
    # stay above _LOWP_ERR for several iterations while most are already that close: the earlier
    # rule (float32 while any context exceeds _LOWP_ERR) kept the whole batch in float32, unable to
    # converge and retire, for 7 passes. No float32 pass may follow an iteration with fewer than a
    # quarter of the contexts above _LOWP_FLOOR, and the minimiser is the all-float64 one.
    events, real_err, real_der = [], ex._scaled_error, ex._derivatives

    def err_spy(g, diag, floor):
        err, gmax = real_err(g, diag, floor)
        events.append(("err", err.clone()))
        return err, gmax

    def der_spy(o, z, work=None, lowp=None):
        events.append(("f32", lowp is not None))
        return real_der(o, z, work, lowp)

    monkeypatch.setattr(ex, "_scaled_error", err_spy)
    monkeypatch.setattr(ex, "_derivatives", der_spy)
    p = make_problem(64, 16, seed=2, ref="dirichlet")
    r = solve_exact(p, alpha=0.3, beta=1.0)
    assert r.converged
    assert any(low for kind, low in events if kind == "f32")       # float32 was used early on
    last, late = None, []
    for kind, x in events:
        if kind == "err":
            last = x
        elif x and last is not None:
            late.append(4 * int((last > ex._LOWP_FLOOR).sum()) < last.numel())
    assert late and not any(late)
    monkeypatch.setattr(ex, "_LOWP_MIN_ACTIONS", 10**9)             # float64 only
    r64 = solve_exact(p, alpha=0.3, beta=1.0)
    assert r64.converged
    np.testing.assert_allclose(r.logits, r64.logits, rtol=0, atol=1e-10)


def test_split_step_recomputes_derivatives_only_where_the_search_moved_back(monkeypatch):
    # Every context fails the convexity bound (an artificially steep slope) and goes to the line
    # search; the search keeps t = 1 for even contexts and halves the odd ones. Only the odd ones may
    # get new derivatives, and every returned derivative must equal a fresh one at the returned point.
    obj = objective(6, 5, seed=3)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    d = 0.3 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    fn = obj.nonconvex_values(z)
    slope = torch.full((6,), -1e30, dtype=torch.float64)
    small = torch.zeros(6, dtype=torch.bool)
    monkeypatch.setattr(ex, "_backtrack", lambda o, z, d, slope: torch.tensor([1.0, 0.5, 1.0, 0.5, 1.0, 0.5],
                                                                               dtype=torch.float64))
    recomputed = []
    real = SPOObjective.split_derivatives

    def spy(self, z, *args, **kwargs):
        recomputed.append(z.shape[0])
        return real(self, z, *args, **kwargs)

    first = real(obj, z + d)                                 # what _newton's derivatives() returns
    monkeypatch.setattr(SPOObjective, "split_derivatives", spy)
    z_new, derivs, t = ex._split_step(obj, z, d, slope, fn, small, lambda o, x: first)
    assert recomputed == [3]                                 # the three contexts the search moved, once
    torch.testing.assert_close(t, torch.tensor([1.0, 0.5, 1.0, 0.5, 1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(z_new, z + t[:, None] * d, rtol=0, atol=1e-15)
    monkeypatch.setattr(SPOObjective, "split_derivatives", real)
    for got, want in zip(derivs, real(obj, z_new)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_max_step_is_two_nats_or_half_over_alpha_where_the_kl_is_on():
    p = make_problem(4, 3, seed=0)
    obj = SPOObjective(pair_mass(p), alpha=np.array([0.1, 0.7, 0.25, 0.05]), beta=np.array([0.5, 0.5, 1.0, 0.0]),
                       log_ref=p.log_ref, context_probs=p.context_probs)
    torch.testing.assert_close(obj.max_step(), torch.tensor([5.0, 2.0, 2.0, float("inf")], dtype=torch.float64))


def test_quadratic_radius_is_a_twentieth_of_the_narrowest_curvature_scale():
    # The KL term and the softmax bend over ~1 nat, the margin loss over its width: 1/α (SPO), 1/β (DPO).
    p = make_problem(4, 3, seed=0)
    spo = SPOObjective(pair_mass(p), alpha=np.array([0.1, 0.7, 2.0, 1e3]), beta=0.5, log_ref=p.log_ref,
                       context_probs=p.context_probs)
    torch.testing.assert_close(spo.quadratic_radius(), torch.tensor([0.05, 0.05, 0.025, 5e-5], dtype=torch.float64))
    dpo = dpo_objective(pair_mass(p), beta=1e3, log_ref=p.log_ref, context_probs=p.context_probs)
    torch.testing.assert_close(dpo.quadratic_radius(), torch.full((4,), 5e-5, dtype=torch.float64))
    ipo = ipo_objective(pair_mass(p), tau=1e-3, log_ref=p.log_ref, context_probs=p.context_probs)
    torch.testing.assert_close(ipo.quadratic_radius(), torch.full((4,), 0.05, dtype=torch.float64))


def test_untested_newton_steps_never_raise_the_objective_at_a_sharp_alpha(monkeypatch):
    # α = 1e3: the preference term is a wall 1e-3 wide with the minimiser on it (W_13/W_31 ~ 1e-195).
    # Steps the solver takes whole without a test (`small`) must still go downhill; fixed 0.05-nat
    # steps crossed the wall back and forth, raising the objective, until max_iter.
    problem = TabularProblem(np.array([[-411.0, 277.0, 1000.0, 726.0]]), np.array([[0.23, 0.15, 0.48, 0.14]]))
    rises = []
    real = ex._split_step

    def spy(obj, z, d, slope, fn, small, derivatives):
        z_new, derivs, t = real(obj, z, d, slope, fn, small, derivatives)
        if bool(small.any()):
            before, after = obj.values(z)[small], obj.values(z_new)[small]
            rises.append(float((after - before - 1e-14 * before.abs()).max()))
        return z_new, derivs, t

    monkeypatch.setattr(ex, "_split_step", spy)
    result = solve_exact(problem, alpha=1e3, beta=10.0)
    assert result.converged and result.n_iter < 30
    assert rises and max(rises) <= 0.0


def _longest_steps(monkeypatch, obj_max_step=None):
    """Solve a hard β > 0 problem (α = 0.3, β = 0.5: indefinite KL Hessians from the start) and return
    the largest |Δz| of every Newton step, optionally with SPOObjective.max_step replaced."""
    if obj_max_step is not None:
        monkeypatch.setattr(SPOObjective, "max_step", obj_max_step)
    steps = []
    real = ex._split_step

    def spy(obj, z, d, slope, fn, small, derivatives):
        steps.append(float(d.abs().max()))
        return real(obj, z, d, slope, fn, small, derivatives)

    monkeypatch.setattr(ex, "_split_step", spy)
    result = solve_exact(make_problem(64, 32, seed=0, ref="dirichlet"), alpha=0.3, beta=0.5)
    assert result.converged
    return steps, result


def test_newton_steps_are_capped_where_the_saddle_free_step_would_run_off(monkeypatch):
    uncapped, free = _longest_steps(monkeypatch, lambda self: torch.full((self.n_contexts,), float("inf"),
                                                                         dtype=torch.float64))
    assert max(uncapped) > 10.0            # the saddle-free steps do run off without the bound
    monkeypatch.undo()
    capped, result = _longest_steps(monkeypatch)
    assert max(capped) <= 2.0 * (1 + 1e-12)
    # Same kind of answer: a converged stationary point with a loss no worse than a local minimum's noise.
    assert abs(result.loss - free.loss) <= 1e-5 * abs(free.loss)


def test_float32_iterations_take_their_saddle_free_steps_in_float32(monkeypatch):
    # Early float32 Hessians that are indefinite are rebuilt in float32, so the
    # eigendecomposition runs in float32; the last steps, and the answer, stay float64.
    dtypes = []
    real = torch.linalg.eigh

    def spy(A, *args, **kwargs):
        dtypes.append(A.dtype)
        return real(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", spy)
    problem = make_problem(64, 32, seed=0, ref="dirichlet")
    result = solve_exact(problem, alpha=0.3, beta=0.5)
    assert result.converged and result.logits.dtype == np.float64
    assert torch.float32 in dtypes
    monkeypatch.setattr(ex, "_LOWP_MIN_ACTIONS", 10**9)         # the same solve all in float64
    dtypes.clear()
    reference = solve_exact(problem, alpha=0.3, beta=0.5)
    assert torch.float32 not in dtypes
    assert abs(result.loss - reference.loss) <= 1e-5 * abs(reference.loss)
