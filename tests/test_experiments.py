"""Experiments on --quick settings: tidy frames, provenance, and the facts each one is meant to show."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from spo_tabular.cli import main
from spo_tabular.experiments import EXPERIMENTS, PROVENANCE, run_experiment
from spo_tabular.experiments import collapse
from spo_tabular.preferences import ipo_toy_dataset

QUICK = {}


def quick(name):
    """Each quick experiment runs once per test session."""
    if name not in QUICK:
        QUICK[name] = run_experiment(name, quick=True, quiet=True)
    return QUICK[name]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_is_tidy_with_provenance(name):
    df, summary = quick(name)
    assert isinstance(df, pd.DataFrame) and len(df) > 0
    assert list(df.columns[-len(PROVENANCE):]) == list(PROVENANCE)
    assert df["experiment"].eq(name).all() and df["config_hash"].str.len().eq(12).all()
    json.dumps(summary, allow_nan=False)                   # strict JSON
    assert summary["experiment"] == name and summary["rows"] == len(df)


def test_scaling_exact_and_sgd_agree_and_the_error_falls_with_n():
    df, summary = quick("scaling")
    assert (df["exact_status"] == "converged").all()
    assert df["sgd_tv_to_exact"].max() < 1e-5               # SGD lands on the empirical minimiser
    means = df.groupby("n_pairs")["exact_max_tv_to_target"].mean()
    assert means.is_monotonic_decreasing
    assert -1.0 < summary["slope_exact"] < -0.2             # theory −1/2 (3 sizes, 2 seeds here)
    assert summary["slope_sgd"] == pytest.approx(summary["slope_exact"], abs=1e-3)


def test_noise_spo_equals_dpo_under_uniform_ref_and_noise_hurts():
    df, _ = quick("noise")
    spo = df[df["method"] == "spo"].reset_index(drop=True)
    dpo = df[df["method"] == "dpo"].reset_index(drop=True)
    # Uniform π_ref, α = β: DPO's objective is SPO's up to a factor, so the minimisers coincide.
    np.testing.assert_allclose(spo["max_tv_to_target"], dpo["max_tv_to_target"], atol=1e-6)
    for method, g in df.groupby("method"):
        m = g.groupby("noise")[["max_tv_to_target", "win_rate_vs_ref", "entropy"]].mean()
        assert m["max_tv_to_target"].is_monotonic_increasing, method
        assert m["win_rate_vs_ref"].is_monotonic_decreasing, method
        assert m["entropy"].is_monotonic_increasing, method      # flipped labels flatten the policy
        assert (g["win_rate_vs_ref"] >= 0.5 - 1e-9).all()


def test_dataset_size_kl_keeps_small_data_finite():
    df, summary = quick("dataset-size")
    unregularised = df[df["method"].isin(["spo", "dpo"])]
    # No finite minimiser exactly where the beats graph is not strongly connected (SPEC §6).
    assert ((unregularised["status"] == "no_finite_minimizer") == ~unregularised["strongly_connected"]).all()
    assert (df.loc[df["method"] == "spo_kl", "status"] != "no_finite_minimizer").all()
    small = df[df["n_pairs"] == df["n_pairs"].min()].set_index(["method", "seed_index"])
    # With few pairs the KL term holds the policy nearer π_ref: more entropy, less KL.
    assert (small.loc["spo_kl", "entropy"] > small.loc["spo", "entropy"]).all()
    assert (small.loc["spo_kl", "kl_to_ref"] < small.loc["spo", "kl_to_ref"]).all()


def test_collapse_curves_and_facts():
    df, summary = quick("collapse")
    cols = {"dataset", "method", "loss", "param", "run", "step", "action", "probability", "entropy", "max_prob"}
    assert cols <= set(df.columns)
    # Probabilities sum to 1 at every (dataset, method, run, step); every run starts at uniform π_ref.
    sums = df.groupby(["dataset", "method", "run", "step"])["probability"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-9)
    np.testing.assert_allclose(df.loc[df["step"] == 0, "probability"], 1 / 3, atol=1e-12)
    final = summary["final"]
    d1 = final["D1"]
    # D1 is unanimous: DPO heads for a deterministic policy faster than SPO with its KL term.
    assert d1["dpo(beta=0.1)"]["max_prob"]["mean"] > d1["spo(alpha=1,beta=0.1)"]["max_prob"]["mean"]
    assert d1["dpo(beta=0.1)"]["entropy"]["mean"] < d1["spo(alpha=1,beta=0.1)"]["entropy"]["mean"]
    assert d1["dpo(beta=0.1)"]["policy"]["a"] > d1["dpo(beta=0.1)"]["policy"]["b"] > d1["dpo(beta=0.1)"]["policy"]["c"]
    # D2 is a symmetric cycle: every method stays near uniform.
    for method, res in final["D2"].items():
        assert res["entropy"]["mean"] > 0.95 * math.log(3), method
    curves = collapse.learning_curves(df)
    assert set(curves.columns) == {"dataset", "method", "loss", "param", "step", "action", "mean", "low", "high"}
    assert (curves["low"] <= curves["mean"] + 1e-12).all() and (curves["mean"] <= curves["high"] + 1e-12).all()


def test_collapse_runs_are_independent_adam_runs():
    """Vectorising runs is exact: run r of a stacked training equals a lone training with the same batches."""
    import torch
    problem, data = ipo_toy_dataset("D1")
    steps, probs = collapse.train_runs(problem, data, loss="dpo", params={"beta": 0.5}, n_runs=3, steps=20,
                                       batch_size=9, lr=0.01, record_every=20, seed=11)
    # Replay run 1 alone with the index draws of the stacked run.
    g = torch.Generator().manual_seed(11)
    draws = [torch.randint(len(data), (3, 9), generator=g)[1] for _ in range(20)]
    chosen, rejected = torch.tensor(data.chosen), torch.tensor(data.rejected)
    z = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.01)
    for k in draws:
        logp = torch.log_softmax(z, dim=-1)[0]
        h = logp[chosen[k]] - logp[rejected[k]]
        loss = -torch.nn.functional.logsigmoid(0.5 * h).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(probs[-1, 1, 0], torch.softmax(z, -1)[0].detach().numpy(), rtol=1e-12)
    assert steps.tolist() == [0, 20]


def test_regularization_path_runs_from_target_to_ref():
    df, summary = quick("regularization")
    assert (df["status"] == "converged").all()
    assert summary["tv_to_target_increasing"] and summary["tv_to_ref_decreasing"] and summary["kl_to_ref_decreasing"]
    assert summary["tv_to_target_at_smallest_beta"] < 5e-3
    assert summary["tv_to_ref_at_largest_beta"] < 5e-3
    assert df["grad_norm"].max() < 1e-9


def test_same_seed_same_numbers():
    a, _ = run_experiment("scaling", quick=True, quiet=True)
    b, _ = quick("scaling")
    pd.testing.assert_frame_equal(a.drop(columns="wall_time_s"), b.drop(columns="wall_time_s"))


def test_cli_writes_csv_and_summary_atomically(tmp_path, capsys):
    assert main(["experiment", "regularization", "--quick", "--json", "--quiet", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["experiment"] == "regularization"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["regularization-quick-summary.json", "regularization-quick.csv", "regularization-quick.jsonl"]
    on_disk = json.loads((tmp_path / "regularization-quick-summary.json").read_text())
    assert on_disk["rows"] == summary["rows"]
    df = pd.read_csv(tmp_path / "regularization-quick.csv")
    assert len(df) == summary["rows"] and set(PROVENANCE) <= set(df.columns)
    # A rerun resumes from the journal: the same rows, nothing recomputed.
    assert main(["experiment", "regularization", "--quick", "--json", "--quiet", "--out", str(tmp_path)]) == 0
    again = pd.read_csv(tmp_path / "regularization-quick.csv")
    pd.testing.assert_frame_equal(df, again)


def test_cli_text_output(capsys):
    assert main(["experiment", "scaling", "--quick", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "slope_exact" in out and "theory_slope" in out


@pytest.mark.parametrize("argv, match", [
    (["experiment", "nope"], "invalid choice"),
    (["experiment", "scaling", "--quick", "--jobs", "0"], "jobs"),
    (["experiment", "scaling", "--quick", "--seeds", "0"], "n_seeds"),
    (["experiment", "scaling", "--quick", "--scheduler", "localhost"], "scheduler"),
])
def test_cli_bad_arguments_exit_2(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_run_experiment_bad_name():
    with pytest.raises(ValueError, match="name must be one of"):
        run_experiment("nope")


def test_cli_on_a_dask_cluster(capsys):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:   # any free port (xdist runs two at once)
        assert main(["experiment", "regularization", "--quick", "--json", "--quiet",
                     "--scheduler", cluster.scheduler_address]) == 0
    summary = json.loads(capsys.readouterr().out)
    _, local = quick("regularization")
    assert summary["by_beta"] == local["by_beta"]
