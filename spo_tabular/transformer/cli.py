"""`spo-tabular transformer`: flags mapped one-to-one from the config dataclasses' fields.

Each dataclass field becomes --field-name with the field's comment as its help, so the configs stay
the single source of defaults and documentation. Exit code 0 when the final exact TV ≤ --tol, else 1.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys

from ..report import format_record
from .model import GPTConfig
from .task import TaskConfig
from .train import RunConfig, TrainConfig, train

# The model's vocabulary, prompts and length are the task's: no separate flags.
_TASK_OWNED = ("vocab_size", "n_contexts", "seq_len")
_GROUPS = (("task", TaskConfig, ()), ("model", GPTConfig, _TASK_OWNED), ("train", TrainConfig, ()),
           ("run", RunConfig, ()))
_TYPES = {"int": int, "float": float, "str": str, "str | None": str, "int | None": int}


def _field_help(cls) -> dict:
    """{field: its trailing comment} read from the class source."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("%", "%%")
    return out


def configure(p):
    """Add one flag per config field (bool fields: --flag when off by default, --no-flag when on)."""
    for title, cls, skip in _GROUPS:
        group = p.add_argument_group(f"{title} ({cls.__name__})")
        helps = _field_help(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flag, dest, text = "--" + f.name.replace("_", "-"), f"{title}.{f.name}", helps.get(f.name, "")
            if f.type == "bool":
                if f.default:
                    group.add_argument("--no-" + f.name.replace("_", "-"), dest=dest, action="store_false",
                                       default=True, help=text)
                else:
                    group.add_argument(flag, dest=dest, action="store_true", default=False, help=text)
            else:
                group.add_argument(flag, dest=dest, type=_TYPES[f.type], default=f.default, metavar=f.name.upper(),
                                   help=f"{text} (default: {f.default})")
    p.add_argument("--tol", type=float, default=0.05, help="pass (exit 0) if the final exact TV ≤ tol")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON (log lines go to stderr)")


def configs_from_args(args):
    """(TaskConfig, GPTConfig, TrainConfig, RunConfig) from parsed flags; invalid values raise ValueError."""
    values = vars(args)
    built = []
    for title, cls, skip in _GROUPS:
        kwargs = {f.name: values[f"{title}.{f.name}"] for f in dataclasses.fields(cls) if f.name not in skip}
        built.append(cls(**kwargs))
    return tuple(built)


def run(args) -> int:
    """Train, print the final exact metrics; 0 if TV ≤ tol (TV to the exact minimiser when known), else 1."""
    task_cfg, model_cfg, cfg, run_cfg = configs_from_args(args)
    stream = sys.stderr if args.json else sys.stdout
    result = train(task_cfg, model_cfg, cfg, run_cfg, log=lambda line: print(line, file=stream, flush=True))
    if result is None:                          # a torchrun rank other than 0
        return 0
    metrics = result.metrics
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_record({k: val for k, val in metrics.items() if k != "config"}))
    tv = metrics.get("tv_exact", metrics.get("tv_target"))
    return 0 if tv is None or tv <= args.tol else 1
