"""Fuzzing the public API with random, partly invalid inputs: every call either returns finite numbers
or raises ValueError / TypeError (with a one-line message); the only warnings are the solvers' own
(ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning), and a result that warns
says so in its status. No NaN is ever returned silently. Each test runs FUZZ_FACTOR × the profile's
max_examples (ci: 4 × 30)."""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from spo_tabular import (BestOfNData, PairData, RankedData, TabularProblem, make_problem, oracle_policy, pair_mass,
                         sample_best_of_n, sample_pairs, sample_rankings, soft_optimal_policy, solve_exact,
                         solve_rlhf)
from spo_tabular import metrics
from spo_tabular.checks import check_theorem1
from spo_tabular.cli import main
from spo_tabular.losses import LOSSES, confidence_weights
from spo_tabular.preferences import bradley_terry
from spo_tabular.solvers import ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning

FUZZ_FACTOR = int(os.environ.get("SPO_FUZZ_FACTOR", "4"))      # raise it for a long local fuzzing session
FUZZ = settings(max_examples=FUZZ_FACTOR * settings().max_examples)
SOLVER_WARNINGS = (ConvergenceWarning, NoFiniteMinimizerWarning, NonUniqueMinimizerWarning)
STATUS_WARNING = {"max_iter": ConvergenceWarning, "no_finite_minimizer": NoFiniteMinimizerWarning,
                  "not_unique": NonUniqueMinimizerWarning}
NAN, INF = float("nan"), float("inf")
DEBUG = bool(os.environ.get("SPO_FUZZ_DEBUG"))     # events then carry the start of each error message


def call(fn, *args, **kwargs):
    """(result, caught warnings); a raised ValueError/TypeError gives (None, warnings) after checking its message.

    Records a hypothesis event per outcome, so --hypothesis-show-statistics shows how many calls got through.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            assert message and "\n" not in message, repr(message)
            result = None
            event(f"{fn.__name__}: {type(exc).__name__}" + (f" {message[:40]}" if DEBUG else ""))
        else:
            event(f"{fn.__name__}: {getattr(result, 'status', 'returned')}")
    foreign = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, SOLVER_WARNINGS)]
    assert not foreign, foreign
    return result, caught


def finite(*arrays):
    return all(np.all(np.isfinite(np.asarray(a, dtype=np.float64))) for a in arrays)


def check_solve_result(res, caught):
    """Finite fields, a known status, and a warning exactly when the status is not 'converged'."""
    assert finite(res.policy, res.logits, res.loss, res.grad_norm), res
    assert np.allclose(res.policy.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert res.converged == (res.status in ("converged", "not_unique"))
    categories = {w.category for w in caught}
    if res.status == "converged":
        assert not categories, res.message
    else:
        assert STATUS_WARNING[res.status] in categories, res.message




# --------------------------------------------------------------------------- partly invalid values

def chance(tenths):
    """True with probability about tenths/10 (sampled_from draws its indices evenly; integers favours 0)."""
    return st.sampled_from(range(10)).map(lambda i: i >= 10 - tenths)


def mostly(valid, invalid, tenths_invalid=1):
    """`invalid` with probability tenths_invalid/10, else `valid`: several arguments per call stay mostly valid."""
    return chance(tenths_invalid).flatmap(lambda bad: invalid if bad else valid)


good_floats = st.floats(1e-3, 1e3)
bad_scalars = st.sampled_from([0.0, -1.0, -1e-3, NAN, INF, -INF, None, "1.0", True, np.ones(2), 1j, [1.0]])
positive = mostly(st.one_of(good_floats, st.just(1), good_floats.map(np.float16),
                            good_floats.map(lambda x: torch.tensor(x, dtype=torch.bfloat16))), bad_scalars)
nonnegative = mostly(st.one_of(st.just(0.0), good_floats), bad_scalars)
counts = mostly(st.one_of(st.integers(1, 60), st.just(np.int64(7))), st.sampled_from([0, -3, 2.0, 2.5, None, "5", True]))
seeds = mostly(st.one_of(st.integers(0, 2**32), st.just(np.int64(3))), st.sampled_from([None, -1, 1.5, "0"]))
names = mostly(st.sampled_from(["uniform", "ref"]), st.sampled_from(["dirichlet", "bogus", "", "UNIFORM", None]))
ref_names = mostly(st.sampled_from(["uniform", "dirichlet"]), st.sampled_from(["ref", "bogus", None]))


@st.composite
def float_tables(draw, shape, lo=-3.0, hi=3.0):
    """A float table of the given shape, or one with a defect: NaN/inf, a wrong shape, a wrong dtype, empty."""
    arr = draw(st.lists(st.floats(lo, hi), min_size=math.prod(shape), max_size=math.prod(shape)))
    arr = np.array(arr, dtype=np.float64).reshape(shape)
    defect = draw(st.sampled_from(["none"] * 24 + ["nan", "inf", "shape", "int", "complex", "empty", "str", "f16"]))
    if defect == "nan" and arr.size:
        arr.flat[draw(st.integers(0, arr.size - 1))] = NAN
    elif defect == "inf" and arr.size:
        arr.flat[draw(st.integers(0, arr.size - 1))] = -INF
    elif defect == "shape":
        arr = arr.reshape(-1)[:, None] if arr.ndim > 1 else arr[None]
    elif defect == "int":
        arr = arr.astype(np.int64)
    elif defect == "complex":
        arr = arr + 1j
    elif defect == "empty":
        arr = np.zeros((0,) + shape[1:])
    elif defect == "str":
        arr = arr.astype(str)
    elif defect == "f16":
        arr = arr.astype(np.float16)
    return arr


@st.composite
def probability_rows(draw, shape):
    """Positive rows summing to 1, or rows that are off by a drawn amount, negative or zero."""
    raw = np.array(draw(st.lists(st.floats(0.05, 5.0), min_size=math.prod(shape), max_size=math.prod(shape))))
    rows = raw.reshape(shape) / raw.reshape(shape).sum(axis=-1, keepdims=True)
    defect = draw(st.sampled_from(["none"] * 12 + ["sum", "negative", "zero", "shape"]))
    if defect == "sum":
        rows = rows * (1.0 + draw(st.sampled_from([1e-12, 1e-9, 1e-8, 1e-3, -0.5])))
    elif defect == "negative":
        rows.flat[0] = -rows.flat[0]
    elif defect == "zero":
        rows.flat[0] = 0.0
    elif defect == "shape":
        rows = rows[..., :-1]
    return rows


@st.composite
def problems(draw):
    """A valid small TabularProblem with rewards up to ±1e3 (most of the time), or something else."""
    kind = draw(st.sampled_from(["problem"] * 18 + ["none", "array"]))
    if kind == "none":
        return None
    m, n = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    if kind == "array":
        return np.zeros((m, n))
    scale = draw(st.sampled_from([1.0, 1.0, 10.0, 1e3]))
    problem = make_problem(m, n, seed=draw(st.integers(0, 1000)), ref=draw(st.sampled_from(["uniform", "dirichlet"])))
    return TabularProblem(problem.rewards * scale, problem.ref_policy, problem.context_probs)


@st.composite
def samplers(draw, problem):
    """A sampler name (valid or not) or a pair-probability array (valid or with a defect)."""
    if not isinstance(problem, TabularProblem) or draw(st.booleans()):
        return draw(names)
    m, n = problem.n_contexts, problem.n_actions
    q = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=m * n * n, max_size=m * n * n))).reshape(m, n, n)
    q[:, np.arange(n), np.arange(n)] = 0.0
    q += 1e-3 * ~np.eye(n, dtype=bool)
    q /= q.sum(axis=(1, 2), keepdims=True)
    defect = draw(st.sampled_from(["none"] * 12 + ["diagonal", "negative", "sum", "shape"]))
    if defect == "diagonal":
        q[0, 0, 0] = 0.1
    elif defect == "negative":
        q[0, 0, 1] = -0.1
    elif defect == "sum":
        q *= 1.01
    elif defect == "shape":
        q = q[:, :, :-1]
    return q


@st.composite
def preferences(draw, problem):
    if not isinstance(problem, TabularProblem) or draw(st.booleans()):
        return None
    P = bradley_terry(problem.rewards)
    eps = draw(st.floats(0.0, 0.5))
    P = (1 - eps) * P + eps * (1 - P)
    defect = draw(st.sampled_from(["none"] * 15 + ["asymmetric", "above", "nan", "shape", "string"]))
    if defect == "asymmetric":
        P[0, 0, -1] = min(1.0, P[0, 0, -1] + 0.3)
    elif defect == "above":
        P[0, 0, -1] = 1.5
    elif defect == "nan":
        P[0, -1, 0] = NAN
    elif defect == "shape":
        P = P[:, :-1]
    elif defect == "string":
        P = "bradley_terry"
    return P


@st.composite
def data_for(draw, problem, loss=None):
    """None, or sampled data: mostly the kind `loss` takes, sometimes another kind, another size or junk."""
    fitting = {"spo_best_of_n": "best", "spo_ranked": "ranked"}.get(loss, "pairs")
    kind = draw(mostly(st.sampled_from(["none", fitting, fitting]),
                       st.sampled_from(["pairs", "best", "ranked", "other", "junk"]), 2))
    if kind == "none" or not isinstance(problem, TabularProblem):
        return None
    seed = draw(st.integers(0, 10**6))
    if kind == "pairs":
        return sample_pairs(problem, draw(st.integers(1, 400)), seed=seed)
    k = draw(st.integers(2, problem.n_actions))
    if kind == "best":
        return sample_best_of_n(problem, draw(st.integers(1, 200)), k, seed=seed)
    if kind == "ranked":
        return sample_rankings(problem, draw(st.integers(1, 200)), k, seed=seed)
    if kind == "other":
        return sample_pairs(make_problem(problem.n_contexts + 1, problem.n_actions, seed=0), 50, seed=seed)
    return np.zeros((3, 3), dtype=np.int64)


# --------------------------------------------------------------------------- problems, samplers, data

@FUZZ
@given(data=st.data())
def test_fuzz_problem_construction(data):
    m, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    rewards = data.draw(float_tables((m, n), -1e3, 1e3))
    ref = data.draw(st.one_of(st.none(), probability_rows((m, n))))
    rho = data.draw(st.one_of(st.none(), probability_rows((m,))))
    problem, _ = call(TabularProblem, rewards, ref, rho)
    if problem is not None:
        assert problem.rewards.dtype == problem.ref_policy.dtype == np.float64
        assert finite(problem.rewards, problem.ref_policy, problem.context_probs)
        assert np.all(problem.ref_policy > 0) and np.all(np.abs(problem.ref_policy.sum(axis=1) - 1) <= 1e-9)
        target, _ = call(soft_optimal_policy, problem.rewards, data.draw(positive))
        assert target is None or finite(target)
    made, _ = call(make_problem, data.draw(counts), data.draw(counts), seed=data.draw(seeds),
                   reward_scale=data.draw(nonnegative), ref=data.draw(ref_names))
    assert made is None or finite(made.rewards, made.ref_policy)


@FUZZ
@given(data=st.data())
def test_fuzz_samplers(data):
    problem = data.draw(problems())
    kind = data.draw(st.sampled_from(["pairs", "best", "ranked", "mass"]))
    sampler = data.draw(samplers(problem))
    seed = data.draw(seeds)
    if kind == "pairs":
        out, _ = call(sample_pairs, problem, data.draw(counts), seed=seed, sampler=sampler,
                      preference=data.draw(preferences(problem)))
        if out is not None:   # re-validated by the public constructor
            PairData(out.ctx, out.chosen, out.rejected, out.n_contexts, out.n_actions)
    elif kind == "mass":
        W, _ = call(pair_mass, problem, sampler=sampler, preference=data.draw(preferences(problem)))
        assert W is None or (finite(W) and abs(W.sum() - 1.0) <= 1e-12 and np.all(W >= 0))
    else:
        fn, cls = (sample_best_of_n, BestOfNData) if kind == "best" else (sample_rankings, RankedData)
        upper = problem.n_actions if isinstance(problem, TabularProblem) else 3
        out, _ = call(fn, problem, data.draw(counts), data.draw(mostly(st.integers(2, upper), st.integers(-1, 7), 2)),
                      seed=seed, sampler=sampler)
        if out is not None:
            arrays = (out.ctx, out.shown, out.best) if kind == "best" else (out.ctx, out.ranking)
            cls(*arrays, out.n_contexts, out.n_actions)


def index_arrays(size, upper):
    """size indices in [0, upper) as int64, or (one time in five) a defect: out of range, float, bool, 2-d, empty."""
    valid = st.lists(st.integers(0, max(upper - 1, 0)), min_size=size, max_size=size).map(
        lambda x: np.array(x, dtype=np.int64))
    invalid = st.one_of(
        st.lists(st.integers(-2, upper + 2), min_size=size, max_size=size).map(np.array),
        valid.map(lambda a: a.astype(np.float64)), valid.map(lambda a: a.astype(bool)), valid.map(lambda a: a[None]),
        st.just(np.array([], dtype=np.int64)), st.lists(st.integers(0, 3), max_size=3), st.just("012"), st.just(None))
    return mostly(valid, invalid, 2)


@FUZZ
@given(data=st.data())
def test_fuzz_data_classes(data):
    m, n = data.draw(mostly(st.integers(1, 4), counts)), data.draw(mostly(st.integers(2, 5), counts))
    size = data.draw(st.integers(1, 6))
    mm, nn = (m, n) if isinstance(m, int) and isinstance(n, int) and m > 0 and n > 1 else (2, 3)
    ctx = data.draw(index_arrays(size, mm))
    kind = data.draw(st.sampled_from(["pairs", "best", "ranked"]))
    if kind == "pairs":
        chosen = data.draw(index_arrays(size, nn))
        rejected = data.draw(mostly(st.just((np.asarray(chosen) + 1) % nn) if np.ndim(chosen) == 1 and np.asarray(
            chosen).dtype.kind == "i" else st.just(chosen), index_arrays(size, nn), 2))
        out, _ = call(PairData, ctx, chosen, rejected, m, n)
        if out is not None:
            assert len(out) >= 1 and np.all(out.chosen != out.rejected) and finite(out.counts())
            assert out.counts().sum() == len(out)
    else:
        k = data.draw(st.integers(2, nn))
        perms = st.permutations(list(range(nn))).map(lambda p: p[:k])
        rows = data.draw(mostly(st.lists(perms, min_size=size, max_size=size).map(np.array),
                                st.one_of(index_arrays(size, nn), st.lists(st.lists(st.integers(-1, nn), min_size=k,
                                          max_size=k), min_size=size, max_size=size).map(np.array)), 2))
        if kind == "best":
            out, _ = call(BestOfNData, ctx, rows, data.draw(index_arrays(size, k)), m, n)
        else:
            out, _ = call(RankedData, ctx, rows, m, n)
        assert out is None or len(out) >= 1


# --------------------------------------------------------------------------- losses

dtypes = mostly(st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]), st.just(torch.int64), 1)


@st.composite
def logp_tensors(draw, shape):
    values = draw(st.lists(st.floats(-1e4, 0.0), min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(draw(dtypes))


@FUZZ
@given(data=st.data())
def test_fuzz_losses(data):
    name = data.draw(st.sampled_from(sorted(LOSSES)))
    N = data.draw(st.integers(0, 5))
    shapes = [(N,), (N + 1,), (1,), (N,)] if data.draw(chance(2)) else [(N,), (N,), (N,), (N,)]
    weights = data.draw(st.one_of(st.none(), st.none(), st.just(torch.ones(N)), st.just(-torch.ones(N)),
                                  st.just(torch.full((N,), NAN)), st.just(torch.ones(N + 2)), st.just("mu"),
                                  st.just(lambda lp: confidence_weights(lp, alpha=1.0, gamma=2.0))))
    strength = data.draw(positive)
    if name in ("spo_best_of_n", "spo_ranked"):
        k = data.draw(st.integers(1, 4))
        logps = data.draw(logp_tensors((N, k)))
        args = (logps, data.draw(index_arrays(N, k))) \
            if name == "spo_best_of_n" else (logps,)
        kwargs = {"alpha": strength}
    else:
        n_args = 2 if name in ("spo", "cpo") else 4
        args = tuple(data.draw(logp_tensors(shapes[i])) for i in range(n_args))
        kwargs = {"spo": {"alpha": strength}, "ipo": {"tau": strength}}.get(name, {"beta": strength})
        if name == "cpo":
            kwargs["lam"] = data.draw(nonnegative)
    out, _ = call(LOSSES[name], *args, weights=weights, **kwargs)
    if out is not None:
        assert out.dtype in (torch.float32, torch.float64)
        assert bool(torch.isfinite(out).all()), (name, out)   # finite log-probabilities in, finite loss out


# --------------------------------------------------------------------------- solvers

PARAMS = ("alpha", "beta", "tau", "k", "lam")
LOSS_PARAMS = {"spo": ("alpha", "beta"), "spo_best_of_n": ("alpha", "beta", "k"), "spo_ranked": ("alpha", "beta", "k"),
               "dpo": ("beta",), "ipo": ("tau",), "hinge": ("beta",), "cpo": ("beta", "lam")}


@FUZZ
@given(data=st.data())
def test_fuzz_solve_exact(data):
    problem = data.draw(problems())
    loss = data.draw(mostly(st.sampled_from(sorted(LOSS_PARAMS)), st.sampled_from(["kto", None, "SPO"])))
    # Mostly the parameters the loss takes (sometimes one missing, or one it does not take).
    takes = LOSS_PARAMS.get(loss, ("alpha",))
    chosen = [p for p in takes if not data.draw(chance(1))]
    if data.draw(chance(1)):
        chosen.append(data.draw(st.sampled_from(PARAMS)))
    kwargs = {}
    for name in chosen:
        if name == "k":
            upper = problem.n_actions + 1 if isinstance(problem, TabularProblem) else 5
            kwargs[name] = data.draw(mostly(st.integers(2, upper), counts))
        else:
            kl_weight = name == "beta" and isinstance(loss, str) and loss.startswith("spo")
            kwargs[name] = data.draw(nonnegative if kl_weight or name == "lam" else positive)
    options = {}
    if data.draw(st.booleans()):
        options["data"] = data.draw(data_for(problem, loss))
    if data.draw(chance(3)):
        options["sampler"] = data.draw(samplers(problem))
    if data.draw(chance(2)):
        options["preference"] = data.draw(preferences(problem))
    if data.draw(chance(2)):
        options["max_iter"] = data.draw(st.one_of(st.integers(1, 3), counts))
    if data.draw(chance(2)) and isinstance(problem, TabularProblem):
        m, n = problem.n_contexts, problem.n_actions
        kwargs["weights"] = data.draw(st.sampled_from([np.ones((m, n, n)), np.full((m, n, n), 0.5) + np.eye(n),
                                                       -np.ones((m, n, n)), np.ones((m, n)), np.ones(7), "mu"]))
    # A known solver failure (NaN), pinned by tests/test_extremes.py::
    # test_weighted_spo_population_with_a_reward_gap_beyond_745: remove this once it is fixed.
    assume(not (loss == "spo" and "weights" in kwargs and options.get("data") is None
                and isinstance(problem, TabularProblem) and np.ptp(problem.rewards, axis=1).max() > 700))
    res, caught = call(solve_exact, problem, loss=loss, **kwargs, **options)
    if res is not None:
        check_solve_result(res, caught)


@FUZZ
@given(data=st.data())
def test_fuzz_solve_rlhf_oracles_and_theorem1(data):
    problem = data.draw(problems())
    which = data.draw(st.sampled_from(["rlhf", "oracle", "theorem1"]))
    if which == "rlhf":
        options = {"data": data.draw(data_for(problem))} if data.draw(st.booleans()) else {}
        if data.draw(st.booleans()):
            options["preference"] = data.draw(preferences(problem))
        res, caught = call(solve_rlhf, problem, beta=data.draw(positive), sampler=data.draw(samplers(problem)),
                           **options)
        if res is not None:
            check_solve_result(res, caught)
    elif which == "oracle":
        loss = data.draw(st.sampled_from(["spo", "spo_best_of_n", "spo_ranked", "dpo", "rlhf", "ipo", "hinge", "cpo",
                                          "kto"]))
        kwargs = {name: data.draw(st.integers(1, 6) if name == "k" else positive)
                  for name in data.draw(st.sets(st.sampled_from(PARAMS), min_size=1, max_size=3))}
        target, _ = call(oracle_policy, problem, loss=loss, sampler=data.draw(samplers(problem)), **kwargs)
        assert target is None or (finite(target) and np.allclose(target.sum(axis=1), 1.0, atol=1e-12))
    else:
        report, _ = call(check_theorem1, problem, alpha=data.draw(positive), beta=data.draw(nonnegative),
                         sampler=data.draw(samplers(problem)))
        if report is not None:
            assert finite(report.max_tv, report.mean_tv, report.grad_norm)
            assert report.passed == (report.converged and report.max_tv <= report.tol)


# --------------------------------------------------------------------------- metrics

@FUZZ
@given(data=st.data())
def test_fuzz_metrics(data):
    problem = data.draw(problems())
    m, n = (problem.n_contexts, problem.n_actions) if isinstance(problem, TabularProblem) else (2, 3)
    p = data.draw(mostly(probability_rows((m, n)), float_tables((m, n), 0.0, 1.0)))
    q = data.draw(mostly(probability_rows((m, n)), float_tables((m, n), 0.0, 1.0)))
    for fn in (metrics.tv, metrics.kl, metrics.max_abs_log_ratio):
        out, _ = call(fn, p, q)
        assert out is None or not np.any(np.isnan(out))           # +inf is documented for kl / log ratio
    out, _ = call(metrics.entropy, p)
    assert out is None or finite(out)
    out, _ = call(metrics.expected_reward, data.draw(float_tables((m, n), -1e3, 1e3)), p)
    assert out is None or finite(out)
    out, _ = call(metrics.win_rate, problem, p, q, preference=data.draw(preferences(problem)))
    assert out is None or 0.0 <= out <= 1.0


# --------------------------------------------------------------------------- command line

TOKENS = {   # flag: (valid values, invalid values)
    "--alpha": (["1", "0.5", "1e-3", "1e3"], ["0", "-1", "nan", "inf", "1e400", "abc"]),
    "--beta": (["0", "0.3", "1e3"], ["-0.5", "nan"]),
    "--n-contexts": (["1", "2"], ["0", "2.5", "x"]),
    "--n-actions": (["2", "3"], ["1", "-4"]),
    "--seed": (["0", "7"], ["-1", "s"]),
    "--sampler": (["uniform", "ref"], ["bogus"]),
    "--ref": (["uniform", "dirichlet"], ["bogus"]),
    "--tol": (["1e-9", "1e-6"], ["0", "-1"]),
    "--tau": (["1", "0.1"], ["0", "-inf"]),
    "--k": (["2", "3"], ["1", "9"]),
    "--lam": (["1", "0"], ["-1"]),
    "--reward-scale": (["1", "10"], ["-1"]),
    "--loss": (["spo", "spo_best_of_n", "spo_ranked", "dpo", "ipo", "hinge", "cpo", "rlhf"], ["kto"]),
}


@FUZZ
@given(data=st.data())
def test_fuzz_cli(data):
    command = data.draw(mostly(st.sampled_from(["theorem1", "check"]), st.just("bogus")))
    argv = [command, "--n-contexts", "2", "--n-actions", "3"] if command != "bogus" else [command]
    for flag in data.draw(st.lists(st.sampled_from(sorted(TOKENS)), max_size=4, unique=True)):
        valid, invalid = TOKENS[flag]
        argv += [f"{flag}={data.draw(mostly(st.sampled_from(valid), st.sampled_from(invalid)))}"]
    if data.draw(chance(1)):
        argv.append(data.draw(st.sampled_from(["--json", "--no-such-flag", "stray"])))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", SOLVER_WARNINGS)
        code = main(argv)
    assert code in (0, 1, 2)
    event(f"{command}: exit {code}")
    if code == 2:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spo-tabular: error: "), err.getvalue()
    elif command == "theorem1":       # (check reports max_tv = nan by design where a loss has no closed form)
        assert not re.search(r"\bnan\b", out.getvalue(), re.IGNORECASE), out.getvalue()
