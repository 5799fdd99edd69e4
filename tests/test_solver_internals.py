"""The exact solver's machinery: the convexity bound behind value-free steps, parallel row blocks,
the reused work buffers, lazy subsets and the in-buffer objective values."""
import multiprocessing
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spo_tabular import make_problem, pair_mass, sample_pairs, solve_exact
from spo_tabular.objectives import SPOObjective
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


@pytest.mark.parametrize("scale", [1.0, 40.0, 1e3])
def test_values_in_buffers_match_logsigmoid(scale):
    # min(x, 0) − log1p(e^{−|x|}) in place against F.logsigmoid, including margins where σ underflows.
    obj = objective(4, 6, seed=2)
    z = scale * torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    work = (torch.empty(4, 6, 6, dtype=torch.float64), torch.empty(4, 6, 6, dtype=torch.float64))
    plain, buffered = obj.values(z), obj.values(z, out=work)
    assert torch.allclose(buffered, plain, rtol=4e-16 * 36, atol=0)


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
    cached = ex._WORK.buf
    big = ex._grid_work(2, 1, int(np.sqrt(ex._WORK_CACHE_BYTES / 8)) + 1)
    assert ex._WORK.buf is cached and big[0].data_ptr() != cached.data_ptr()


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
    obj = objective(96, 8, seed=3)
    g, H = obj.grad_hess(torch.randn(96, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
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


@pytest.mark.parametrize("beta, data", [(0.3, False), (0.0, True)])
def test_solve_in_parallel_row_blocks_matches_one_thread(two_threads, beta, data):
    # At two torch threads the contexts are solved in two blocks on the pool (start and Newton per
    # block); at one thread in one piece. Same minimiser, same status.
    p = make_problem(300, 9, seed=11, ref="dirichlet", reward_scale=0.5)
    kw = {"data": sample_pairs(p, 400_000, seed=1)} if data else {}
    assert ex._n_blocks(p.n_contexts) == 2
    blocks = solve_exact(p, alpha=0.8, beta=beta, **kw)
    torch.set_num_threads(1)
    one = solve_exact(p, alpha=0.8, beta=beta, **kw)
    assert blocks.status == one.status == "converged"
    np.testing.assert_allclose(blocks.logits, one.logits, rtol=0, atol=1e-12)
    assert abs(blocks.loss - one.loss) <= 1e-14 * abs(one.loss)


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
