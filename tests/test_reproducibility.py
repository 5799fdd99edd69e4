"""Reproducibility on the CPU: the same seed gives bit-identical data and solutions (every sampler, every
solver), in this process or a fresh one, whatever the global random state; different seeds give different data."""
import hashlib
import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from spo_tabular import (make_problem, oracle_policy, pair_probs, sample_best_of_n, sample_pairs, sample_rankings,
                         solve_exact, solve_rlhf)
from spo_tabular.checks import check_theorem1
from spo_tabular.cli import main
from spo_tabular.loss_checks import check_loss
from spo_tabular.preferences import bradley_terry

ROOT = Path(__file__).resolve().parents[1]


def _noisy_preference(problem):
    P = bradley_terry(problem.rewards)
    return 0.8 * P + 0.2 * (1.0 - P)


def _sparse_sampler(problem):
    """A pair distribution over a path 0–1–…–(n−1) only (partial coverage)."""
    n = problem.n_actions
    q = np.zeros((problem.n_contexts, n, n))
    for a in range(n - 1):
        q[:, a, a + 1] = q[:, a + 1, a] = 1.0
    return q / q.sum(axis=(1, 2), keepdims=True)


def _problem(seed, ref="dirichlet"):
    return make_problem(3, 4, seed=seed, ref=ref)


# Every sampler and option, as (name, draw(problem, seed) -> tuple of arrays).
SAMPLERS = {
    "pairs-uniform": lambda p, s: sample_pairs(p, 500, seed=s),
    "pairs-ref": lambda p, s: sample_pairs(p, 500, seed=s, sampler="ref"),
    "pairs-array": lambda p, s: sample_pairs(p, 500, seed=s, sampler=_sparse_sampler(p)),
    "pairs-preference": lambda p, s: sample_pairs(p, 500, seed=s, preference=_noisy_preference(p)),
    "best-of-3-uniform": lambda p, s: sample_best_of_n(p, 300, 3, seed=s),
    "best-of-2-ref": lambda p, s: sample_best_of_n(p, 300, 2, seed=s, sampler="ref"),
    "ranked-4-uniform": lambda p, s: sample_rankings(p, 300, 4, seed=s),
    "ranked-3-ref": lambda p, s: sample_rankings(p, 300, 3, seed=s, sampler="ref"),
}


def arrays_of(data):
    names = ("ctx", "chosen", "rejected", "shown", "best", "ranking")
    return tuple(getattr(data, name) for name in names if hasattr(data, name))


def same_bytes(a, b):
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


# Every solver on the population and on data, as (name, solve(problem, seed) -> SolveResult).
SOLVES = {
    "spo": lambda p, s: solve_exact(p, alpha=0.7),
    "spo-kl": lambda p, s: solve_exact(p, alpha=0.7, beta=0.3, sampler="ref"),
    "spo-data": lambda p, s: solve_exact(p, alpha=0.7, beta=0.1, data=sample_pairs(p, 400, seed=s)),
    "spo-sparse": lambda p, s: solve_exact(p, alpha=2.0, sampler=_sparse_sampler(p)),
    "spo_best_of_n": lambda p, s: solve_exact(p, loss="spo_best_of_n", alpha=0.5, beta=0.2, k=3),
    "spo_best_of_n-data": lambda p, s: solve_exact(p, loss="spo_best_of_n", alpha=0.5, beta=0.2,
                                                   data=sample_best_of_n(p, 300, 3, seed=s)),
    "spo_ranked": lambda p, s: solve_exact(p, loss="spo_ranked", alpha=1.5, k=4),
    "spo_ranked-data": lambda p, s: solve_exact(p, loss="spo_ranked", alpha=1.5, beta=0.1,
                                                data=sample_rankings(p, 300, 3, seed=s)),
    "dpo": lambda p, s: solve_exact(p, loss="dpo", beta=0.5, preference=_noisy_preference(p)),
    "dpo-data": lambda p, s: solve_exact(p, loss="dpo", beta=0.5, data=sample_pairs(p, 2000, seed=s)),
    "ipo": lambda p, s: solve_exact(p, loss="ipo", tau=0.3, sampler="ref"),
    "ipo-data": lambda p, s: solve_exact(p, loss="ipo", tau=0.3, data=sample_pairs(p, 300, seed=s)),
    "hinge": lambda p, s: solve_exact(p, loss="hinge", beta=2.0),
    "hinge-data": lambda p, s: solve_exact(p, loss="hinge", beta=2.0, data=sample_pairs(p, 300, seed=s)),
    "cpo": lambda p, s: solve_exact(p, loss="cpo", beta=1.0, lam=0.5),
    "cpo-data": lambda p, s: solve_exact(p, loss="cpo", beta=1.0, lam=0.5, data=sample_pairs(p, 2000, seed=s)),
    "rlhf": lambda p, s: solve_rlhf(p, beta=0.5),
    "rlhf-data": lambda p, s: solve_rlhf(p, beta=0.5, data=sample_pairs(p, 2000, seed=s)),
    "rlhf-preference": lambda p, s: solve_rlhf(p, beta=0.5, preference=_noisy_preference(p)),
}


def result_bytes(res) -> bytes:
    """Every field of a SolveResult as bytes: arrays bit for bit, floats by their exact hex."""
    parts = [res.policy.tobytes(), res.logits.tobytes(), float(res.loss).hex().encode(),
             float(res.grad_norm).hex().encode(), repr((res.n_iter, res.converged, res.status, res.message)).encode()]
    return b"|".join(parts)


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # statuses are part of the bytes compared
        return fn(*args)


def digest(seed: int = 11) -> str:
    """sha256 of every sampler's data and every solver's result for one seed (also run in a fresh process)."""
    h = hashlib.sha256()
    for ref in ("uniform", "dirichlet"):
        problem = _problem(seed, ref)
        h.update(problem.rewards.tobytes() + problem.ref_policy.tobytes())
        for name in sorted(SAMPLERS):
            for arr in arrays_of(SAMPLERS[name](problem, seed)):
                h.update(arr.tobytes())
    problem = _problem(seed)
    for name in sorted(SOLVES):
        h.update(result_bytes(_quiet(SOLVES[name], problem, seed)))
    h.update(oracle_policy(problem, loss="ipo", tau=0.3, sampler="ref").tobytes())
    h.update(repr(check_theorem1(problem, alpha=0.3, beta=0.2).as_dict()).encode())
    h.update(repr(check_loss(problem, loss="cpo", beta=1.0, lam=0.5).as_dict()).encode())
    return h.hexdigest()




# --------------------------------------------------------------------------- data

@pytest.mark.parametrize("ref", ["uniform", "dirichlet"])
def test_make_problem_same_seed_same_bits_different_seed_different_rewards(ref):
    a, b, c = _problem(5, ref), _problem(5, ref), _problem(6, ref)
    assert same_bytes((a.rewards, a.ref_policy, a.context_probs), (b.rewards, b.ref_policy, b.context_probs))
    assert not np.array_equal(a.rewards, c.rewards)
    if ref == "dirichlet":
        assert not np.array_equal(a.ref_policy, c.ref_policy)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_same_seed_same_bits_different_seed_different_data(name):
    draw = SAMPLERS[name]
    problem = _problem(0)
    first, again, other = draw(problem, 123), draw(problem, 123), draw(problem, 124)
    assert same_bytes(arrays_of(first), arrays_of(again))
    assert not same_bytes(arrays_of(first), arrays_of(other))
    # A Generator is a seed too: two from the same seed agree, one generator used twice moves on.
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    assert same_bytes(arrays_of(draw(problem, g1)), arrays_of(draw(problem, g2)))
    assert not same_bytes(arrays_of(draw(problem, g1)), arrays_of(draw(problem, np.random.default_rng(9))))
    seq = np.random.SeedSequence(77)
    assert same_bytes(arrays_of(draw(problem, seq)), arrays_of(draw(problem, np.random.SeedSequence(77))))


def test_the_on_the_fly_bradley_terry_path_is_reproducible_too():
    """Above 2^22 (context, pair) cells the sampler computes P on the fly instead of from a table."""
    problem = make_problem(1100, 64, seed=0)
    a, b = sample_pairs(problem, 2000, seed=3), sample_pairs(problem, 2000, seed=3)
    assert same_bytes(arrays_of(a), arrays_of(b))
    assert not same_bytes(arrays_of(a), arrays_of(sample_pairs(problem, 2000, seed=4)))


def test_results_do_not_depend_on_the_global_seeds():
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    first = digest()
    np.random.seed(2)
    random.seed(2)
    torch.manual_seed(2)
    assert digest() == first


def test_the_global_numpy_torch_and_python_streams_are_not_consumed():
    problem = _problem(0)
    np.random.seed(31)
    torch.manual_seed(31)
    random.seed(31)
    for draw in SAMPLERS.values():
        draw(problem, 5)
    for solve in SOLVES.values():
        _quiet(solve, problem, 5)
    assert np.random.random_sample() == np.random.RandomState(31).random_sample()
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(31)).item()
    assert random.random() == random.Random(31).random()


# --------------------------------------------------------------------------- solutions

@pytest.mark.parametrize("name", sorted(SOLVES))
def test_every_solver_gives_bit_identical_results_for_the_same_seed(name):
    problem = _problem(2)
    first, again = _quiet(SOLVES[name], problem, 8), _quiet(SOLVES[name], _problem(2), 8)
    assert result_bytes(first) == result_bytes(again)
    assert np.all(np.isfinite(first.policy))


def test_solutions_on_data_from_different_seeds_differ():
    problem = _problem(2)
    for name in ("spo-data", "dpo-data", "spo_best_of_n-data", "rlhf-data"):
        assert result_bytes(_quiet(SOLVES[name], problem, 8)) != result_bytes(_quiet(SOLVES[name], problem, 9)), name


def test_a_fresh_process_reproduces_every_byte():
    """No hidden state: a new interpreter (another hash seed, torch's default thread count rather than
    this module's one thread) gives the same digest."""
    code = "import sys; sys.path.insert(0, 'tests'); from test_reproducibility import digest; print(digest())"
    env = dict(os.environ, PYTHONHASHSEED="99", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest()


def test_the_cli_json_reports_are_identical_for_the_same_seed(capsys):
    outputs = []
    for argv in (["theorem1", "--json", "--seed", "4", "--n-contexts", "3", "--n-actions", "4", "--beta", "0.2"],
                 ["check", "--json", "--loss", "cpo", "--seed", "4", "--n-contexts", "3", "--n-actions", "4"]):
        runs = []
        for _ in range(2):
            main(argv)
            report = json.loads(capsys.readouterr().out)
            report.pop("provenance", {}).pop("created_at", None)
            runs.append(report)
        assert runs[0] == runs[1]
        outputs.append(runs[0])
    main(["theorem1", "--json", "--seed", "5", "--n-contexts", "3", "--n-actions", "4", "--beta", "0.2"])
    assert json.loads(capsys.readouterr().out)["max_tv"] != outputs[0]["max_tv"]
