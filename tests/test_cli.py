"""The command line: exit codes 0 pass / 1 fail / 2 bad arguments, JSON output, one-line errors."""
import json
import subprocess
import sys

import pytest

from spo_tabular.cli import main


def run_cli(*args):
    """Run `python -m spo_tabular.cli ARGS` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "spo_tabular.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_theorem1_passes_and_prints_table(capsys):
    assert main(["theorem1", "--n-contexts", "3", "--n-actions", "4", "--alpha", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "max_tv" in out and "PASS" in out


def test_theorem1_json_is_machine_readable(capsys):
    assert main(["theorem1", "--json", "--sampler", "ref", "--ref", "dirichlet", "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["max_tv"] <= 1e-12 and report["sampler"] == "ref"


def test_theorem1_fails_with_exit_1_when_beta_positive(capsys):
    # β > 0 moves the minimiser away from softmax(r/α): the check must say so.
    assert main(["theorem1", "--beta", "0.5", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["max_tv"] > 1e-3


@pytest.mark.parametrize("args", [
    ["theorem1", "--alpha", "-1"],
    ["theorem1", "--alpha", "nan"],
    ["theorem1", "--beta", "-0.5"],
    ["theorem1", "--n-actions", "1"],
    ["theorem1", "--n-contexts", "x"],
    ["theorem1", "--sampler", "bogus"],
    ["theorem1", "--ref", "bogus"],
    ["theorem1", "--no-such-flag"],
    ["no-such-command"],
])
def test_bad_arguments_exit_2_with_one_line(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spo-tabular: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_reproduce_quick_all_pass(capsys):
    assert main(["reproduce", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "claims passed" in out and "FAIL" not in out
