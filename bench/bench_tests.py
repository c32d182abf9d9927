"""Wall time of `make test-fast`, the unit tests for day-to-day work.

    python bench/bench_tests.py [--repeats 3] [--record]

Each repeat runs `make test-fast` in the checkout as a user would, with the
virtual environment and atlas already set up: the test set-up check (data
checksums included) and pytest on the tests not marked integration, slurm,
browser or slow. Reports the median wall time against the 5-minute target,
pytest's own counts, the CPU seconds it used (user + system, which other work on
the machine does not inflate the way it inflates wall time) and the 1-min load
average before and after each run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section  # noqa: E402

TARGET_S = 300


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once() -> dict:
    load_before, cpu_before = os.getloadavg()[0], children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run(["make", "test-fast"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"make test-fast failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                 f"\n{proc.stderr[-3000:]}")
    counts = re.findall(r"\d+ (?:passed|failed|deselected|errors?)", proc.stdout)
    return {"wall_s": wall, "cpu_s": children_cpu_s() - cpu_before,
            "summary": ", ".join(counts), "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        runs.append(run_once())
        r = runs[-1]
        print(f"run {i + 1}: {r['wall_s']:.0f} s, {r['cpu_s']:.0f} CPU s ({r['summary']}); "
              f"load {r['load_before']:.1f} -> {r['load_after']:.1f}", flush=True)
    median = statistics.median(r["wall_s"] for r in runs)
    verdict = "met" if median < TARGET_S else "NOT met"
    print(f"median {median:.0f} s; target {TARGET_S} s {verdict}")
    if args.record:
        lines = [f"`python bench/bench_tests.py --repeats {args.repeats} --record` "
                 f"({datetime.date.today()}; {platform.node()}, {cpu_model()}, "
                 f"{os.cpu_count()} cores, Python {platform.python_version()}, niceness "
                 f"{os.nice(0)}): `make test-fast` with the environment and atlas set up "
                 f"(the set-up check, data checksums included, then pytest).", "",
                 f"Median of {args.repeats}: **{median:.0f} s** wall (target under "
                 f"{TARGET_S} s: {verdict}).", "",
                 "| run | wall s | CPU s (user + system) | pytest | 1-min load before | after |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['summary']} | "
                  f"{r['load_before']:.1f} | {r['load_after']:.1f} |" for i, r in enumerate(runs)]
        replace_section(REPO / "docs/benchmarks.md", "Unit tests (make test-fast)",
                        "\n".join(lines))


if __name__ == "__main__":
    main()
