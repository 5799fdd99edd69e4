"""Run every benchmark at full size and write benchmarks/RESULTS.md (tables, machine, versions, date).

`make bench` calls this. Each script also runs alone (`python benchmarks/bench_X.py [--quick]`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def versions() -> dict:
    import numpy, scipy, torch
    out = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
           "torch": torch.__version__}
    try:
        import choix
        out["choix"] = getattr(choix, "__version__", "installed")
    except ImportError:
        out["choix"] = "missing"
    import spo_tabular
    out["spo_tabular"] = spo_tabular.__version__
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke run; RESULTS.md is not written)")
    ap.add_argument("--only", nargs="*", help="bench script stems to run, e.g. bench_exact bench_fit")
    args = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
    sections = []
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"$ {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
        print(proc.stdout, proc.stderr[-2000:] if proc.returncode else "", flush=True)
        sections.append((script.stem, proc.returncode, proc.stdout.strip()))
    if args.quick:
        return 0 if all(rc == 0 for _, rc, _ in sections) else 1
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = HERE / "RESULTS.md"
    if args.only and results.exists():
        # Rerun of some scripts: replace just their sections, stamped with the rerun's date.
        text = results.read_text()
        for stem, rc, out in sections:
            body = out if rc == 0 else f"FAILED (exit {rc})\n{out}"
            section = f"## {stem}\n\n(rerun {now})\n\n```\n{body}\n```\n\n"
            start = text.find(f"## {stem}\n")
            if start < 0:       # a script added since the last full run: its section goes at the end
                text = text.rstrip("\n") + "\n\n" + section
                continue
            end = text.find("\n## ", start + 1)
            end = len(text) if end < 0 else end + 1
            text = text[:start] + section + text[end:]
        results.write_text(text)
        print(f"updated {results}")
        return 0 if all(rc == 0 for _, rc, _ in sections) else 1
    lines = ["# Benchmark results", "", f"- date: {now}", f"- machine: {machine()}",
             f"- versions: {json.dumps(versions())}", "- command: `make bench` (`python benchmarks/run_all.py`)",
             "", "Every ratio is measured in one run on this machine: baseline time / our time.", ""]
    for stem, rc, out in sections:
        lines += [f"## {stem}", "", "```", out if rc == 0 else f"FAILED (exit {rc})\n{out}", "```", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0 if all(rc == 0 for _, rc, _ in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
