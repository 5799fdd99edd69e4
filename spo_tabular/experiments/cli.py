"""`spo-tabular experiment NAME`: run a named experiment and print (or write) its summary."""
from __future__ import annotations

import json

from ..report import format_record
from . import EXPERIMENTS, run_experiment


def configure(p):
    """Arguments of the experiment command."""
    p.add_argument("name", choices=sorted(EXPERIMENTS), metavar="NAME",
                   help="one of: " + ", ".join(f"{k} ({e.help})" for k, e in EXPERIMENTS.items()))
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    p.add_argument("--out", metavar="DIR", help="write NAME.csv and NAME-summary.json there (resumable via NAME.jsonl)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the experiment's)")
    p.add_argument("--root-seed", type=int, default=0, help="root of the SeedSequence the seeds are spawned from")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes (1: run inline)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask distributed scheduler")
    p.add_argument("--quiet", action="store_true", help="no progress bars (also SPO_TABULAR_QUIET=1)")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, x in d.items():
        if isinstance(x, dict):
            flat.update(_flatten(x, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = x
    return flat


def run(args) -> int:
    """Run the experiment; exit code 0."""
    _, summary = run_experiment(args.name, quick=args.quick, out=args.out, n_seeds=args.seeds,
                                root_seed=args.root_seed, jobs=args.jobs, scheduler=args.scheduler,
                                quiet=args.quiet)
    print(json.dumps(summary, indent=2) if args.json else format_record(_flatten(summary)))
    return 0
