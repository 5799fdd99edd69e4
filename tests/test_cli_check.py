"""`spo-tabular check --loss NAME` and the loss-zoo rows of `spo-tabular reproduce`, end to end."""
import json

import pytest
import torch

from spo_tabular import make_problem
from spo_tabular.cli import main
from spo_tabular.loss_checks import check_loss, loss_params, luce_mle, zoo_claims



@pytest.mark.parametrize("argv", [
    ["--loss", "spo"], ["--loss", "spo", "--beta", "0.3"], ["--loss", "spo_best_of_n", "--k", "4"],
    ["--loss", "spo_ranked", "--alpha", "0.5"], ["--loss", "dpo", "--ref", "dirichlet"], ["--loss", "rlhf"],
    ["--loss", "ipo", "--tau", "0.2", "--sampler", "ref", "--ref", "dirichlet"], ["--loss", "hinge", "--beta", "2"],
    ["--loss", "cpo", "--lam", "0.3"],
])
def test_check_passes_for_every_loss(argv, capsys):
    assert main(["check", *argv, "--n-contexts", "3", "--n-actions", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["measured"] <= report["tol"]


def test_check_prints_a_readable_record(capsys):
    assert main(["check", "--loss", "dpo", "--n-contexts", "2", "--n-actions", "3"]) == 0
    out = capsys.readouterr().out
    assert "criterion" in out and "oracle max TV" in out and "PASS" in out


def test_check_fails_with_exit_code_1_when_the_tolerance_is_unreachable(capsys):
    assert main(["check", "--loss", "ipo", "--n-contexts", "2", "--n-actions", "4", "--tol", "1e-300"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--loss", "kto"], "invalid choice"),
    ([], "required: --loss"),
    (["--loss", "dpo", "--tau", "1"], "tau not used by loss 'dpo'"),
    (["--loss", "spo", "--alpha", "-1"], "alpha"),
    (["--loss", "spo_ranked", "--k", "9"], "at most n_actions"),
    (["--loss", "spo", "--n-actions", "1"], "n_actions"),
])
def test_check_bad_arguments_exit_2_with_one_line(argv, match, capsys):
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err


def test_loss_params_defaults_and_conventions():
    assert loss_params("spo") == {"alpha": 1.0, "beta": 0.0}
    assert loss_params("dpo") == {"beta": 1.0}
    assert loss_params("spo_ranked", k=4) == {"alpha": 1.0, "beta": 0.0, "k": 4}
    assert loss_params("cpo", lam=0.0) == {"beta": 1.0, "lam": 0.0}


def test_check_loss_reports_the_criterion_it_used():
    problem = make_problem(2, 3, seed=0)
    assert check_loss(problem, loss="hinge", beta=1.0).criterion == "LP duality gap"
    assert check_loss(problem, loss="spo", alpha=1.0, beta=0.5).criterion == "stationarity |grad|"
    assert check_loss(problem, loss="spo_ranked", alpha=1.0, k=3).criterion == "oracle max TV"


def test_luce_mle_two_actions_by_hand():
    """Action 0 beats 1 three times and loses once: θ̂_0 − θ̂_1 = log 3."""
    import numpy as np
    ctx = np.zeros(4, dtype=int)
    sets = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    theta = luce_mle([(ctx, sets)], 1, 2)
    assert theta[0, 0] - theta[0, 1] == pytest.approx(np.log(3), rel=1e-12)


def test_reproduce_quick_rows_all_pass_and_cover_every_claim(capsys):
    rows = zoo_claims(quick=True)
    assert all(r["passed"] for r in rows)
    claims = {r["claim"].split(":")[0].split(" argmin")[0].split(" =")[0] for r in rows}
    for needle in ("best-of-n (Luce)", "ranked (Plackett-Luce)", "DPO", "RLHF", "IPO", "hinge", "CPO",
                   "disconnected graph, beta=0", "disconnected graph, beta>0 selects one minimiser",
                   "SPO on pairs", "best-of-n data", "ranked data"):
        assert any(c.startswith(needle) for c in claims), needle
    assert set(rows[0]) == {"claim", "setting", "metric", "measured", "tolerance", "passed"}
    assert main(["reproduce", "--quick", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert any(r["claim"].startswith("Theorem 1") for r in table) and len(table) > len(rows)
