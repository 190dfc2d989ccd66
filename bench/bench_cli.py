"""Benchmark: how long `sam3-adapt --help` and every verb's `--help` take (a fresh process each, as a user runs it).

Reports per command the median wall time and the median CPU time (user + system of the child process, which
does not grow when the machine is busy) over --repeats runs, and whether the help imported torch. Results:
docs/benchmarks.md, section "Command line".

    python bench/bench_cli.py                  # ~1 min on a 2-core machine
    python bench/bench_cli.py --repeats 5 --json cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from sam3_adapt.cli import VERBS  # noqa: E402


def commands() -> list[list[str]]:
    """`--help`, then every verb's (and every sub-verb's) `--help`."""
    out = [["--help"]]
    for verb, entry in VERBS.items():
        subs = list(entry) if isinstance(entry, dict) else [None]
        out += [[verb, *([sub] if sub else []), "--help"] for sub in subs]
    return out


def time_one(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `sam3-adapt ARGV` process."""
    exe = shutil.which("sam3-adapt") or str(Path(sys.executable).with_name("sam3-adapt"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([exe, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Time every help and print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for argv in commands():
        times = [time_one(argv) for _ in range(args.repeats)]
        rows.append({"command": "sam3-adapt " + " ".join(argv), "wall_s": round(statistics.median(t[0] for t in times), 2),
                     "cpu_s": round(statistics.median(t[1] for t in times), 2)})
    print(f"{cpu_model()}, {os.cpu_count()} cores, median of {args.repeats}")
    print("| command | wall s | CPU s |\n|---|---:|---:|")
    for row in rows:
        print(f"| `{row['command']}` | {row['wall_s']:.2f} | {row['cpu_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
