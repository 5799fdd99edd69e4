"""Command-line front end: a thin argparse layer over the library (`spo-tabular --help`).

Each command is a (configure, run) pair in COMMANDS; run returns the exit code:
0 = the check passed, 1 = it failed, 2 = bad arguments (one line on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import figures
from .checks import check_theorem1
from .experiments import cli as experiment_cli
from .io import args_provenance
from .loss_checks import configure_check, run_check, zoo_claims
from .problems import make_problem
from .report import format_record, format_table
from .transformer import cli as transformer_cli


class UsageError(Exception):
    """Bad command-line arguments: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message otherwise)
        raise UsageError(message)


def _add_problem_args(p):
    p.add_argument("--n-contexts", type=int, default=8, help="number of contexts m")
    p.add_argument("--n-actions", type=int, default=6, help="number of actions n")
    p.add_argument("--alpha", type=float, default=1.0, help="SPO softness exponent α > 0")
    p.add_argument("--beta", type=float, default=0.0, help="global KL weight β ≥ 0")
    p.add_argument("--seed", type=int, default=0, help="random seed of the problem")
    p.add_argument("--reward-scale", type=float, default=1.0, help="rewards ~ scale·N(0, 1)")
    p.add_argument("--ref", default="uniform", help="reference policy: uniform | dirichlet")
    p.add_argument("--sampler", default="uniform", help="pair distribution: uniform | ref")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON report")


# --------------------------------------------------------------------------- theorem1

def _configure_theorem1(p):
    _add_problem_args(p)
    p.add_argument("--tol", type=float, default=1e-9, help="pass if max TV ≤ tol")


def _run_theorem1(args) -> int:
    problem = make_problem(args.n_contexts, args.n_actions, seed=args.seed,
                           reward_scale=args.reward_scale, ref=args.ref)
    report = check_theorem1(problem, alpha=args.alpha, beta=args.beta, sampler=args.sampler, tol=args.tol)
    record = {**report.as_dict(), "provenance": args_provenance(args)}
    print(json.dumps(record, indent=2) if args.json else format_record(report.as_dict()))
    return 0 if report.passed else 1


# --------------------------------------------------------------------------- reproduce

def reproduce_claims(quick: bool = False) -> list[dict]:
    """Rows (claim, setting, measured, tolerance, passed) for every claim the toolkit checks so far."""
    rows = []
    sizes = [(4, 3), (16, 8)] if quick else [(16, 8), (64, 32), (256, 64)]
    for (m, n) in sizes:
        for alpha in (0.1, 1.0, 5.0):
            for ref, sampler in (("uniform", "uniform"), ("dirichlet", "ref")):
                problem = make_problem(m, n, seed=0, ref=ref)
                rep = check_theorem1(problem, alpha=alpha, sampler=sampler)
                rows.append({"claim": "Theorem 1: argmin = softmax(r/alpha)",
                             "setting": f"m={m} n={n} alpha={alpha:g} {sampler} pairs, {ref} ref",
                             "metric": "oracle max TV", "measured": rep.max_tv, "tolerance": rep.tol,
                             "passed": rep.passed})
    return rows + zoo_claims(quick=quick)


def _configure_reproduce(p):
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _run_reproduce(args) -> int:
    rows = reproduce_claims(quick=args.quick)
    if args.json:
        prov = args_provenance(args)
        print(json.dumps([{**row, **prov} for row in rows], indent=2))
    else:
        print(format_table(rows))
        n_pass = sum(r["passed"] for r in rows)
        print(f"\n{n_pass}/{len(rows)} claims passed")
    return 0 if all(r["passed"] for r in rows) else 1


COMMANDS = {
    "check": ("check one loss's exact minimiser against its oracle (or an optimality certificate)",
              configure_check, run_check),
    "experiment": ("run a finite-data experiment (scaling, noise, dataset-size, collapse, regularization)",
                   experiment_cli.configure, experiment_cli.run),
    "figures": ("regenerate every paper-style figure as PNG and PDF (data cached in OUT/data)",
                figures.configure, figures.run),
    "reproduce": ("verify every claim checked so far and print one table", _configure_reproduce, _run_reproduce),
    "theorem1": ("check Theorem 1 on a random problem", _configure_theorem1, _run_theorem1),
    "transformer": ("train a small causal transformer with SPO/DPO and check it exactly by enumeration",
                    transformer_cli.configure, transformer_cli.run),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    parser = _Parser(prog="spo-tabular", description="Verify and simulate Soft Preference Optimization.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None) -> int:
    """Entry point of `spo-tabular`; returns (and exits with) 0 pass, 1 fail, 2 bad arguments."""
    try:
        args = build_parser().parse_args(argv)
        code = args._run(args)
    except (UsageError, ValueError, TypeError) as exc:
        message = " ".join(str(exc).splitlines())        # exactly one line, whatever the message holds
        print(f"spo-tabular: error: {message}", file=sys.stderr)
        code = 2
    if __name__ == "__main__" or argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
