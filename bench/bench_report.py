"""Benchmark: the evaluation report for a synthetic 100-subject results folder.

Measures build time (median of 3 runs, each in a fresh process so imports
count, as they do in the Snakemake rule) and the HTML size; targets <= 60 s
and <= 25 MB. Writes the figures under the "Report" heading of
docs/benchmarks.md (other headings are left as they are).

    .venv/bin/python bench/bench_report.py [--subjects 100] [--runs 3] [--shape 120 120 78]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TIME_TARGET_S = 60.0
SIZE_TARGET_MB = 25.0
HEADING = "## Report"

BUILD_SNIPPET = """
import sys, time, json
sys.path.insert(0, {tests!r})
t0 = time.perf_counter()
from btpipe.report import build_report
from report_fixtures import demo_config
build_report({results!r}, demo_config("Benchmark"), {out!r})
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


def build_once(results: Path, out: Path) -> float:
    """Build the report in a fresh interpreter; returns wall seconds incl. imports."""
    code = BUILD_SNIPPET.format(tests=str(REPO / "tests"), results=str(results), out=str(out))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return time.perf_counter() - start


def update_benchmarks_md(path: Path, section: str) -> None:
    """Replace (or append) the '## Report' section, keeping every other heading."""
    from btpipe.io import write_text

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(path, text.rstrip("\n") + "\n")


def main(argv=None) -> int:
    from report_fixtures import make_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[120, 120, 78],
                    help="atlas grid of the synthetic volumes (default: the demo's 2 mm SRI24 grid)")
    ap.add_argument("--features-per-region", type=int, default=100,
                    help="radiomic features per sequence and region (4 x 5 x this, plus shape)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        results = Path(tmp) / "results"
        t0 = time.perf_counter()
        make_results(results, n_subjects=args.subjects, n_failed=2, shape=tuple(args.shape),
                     spacing=240 / args.shape[0], folds=5, models=("cox", "rsf", "deepsurv"),
                     n_features_per_region=args.features_per_region)
        print(f"synthetic results written in {time.perf_counter() - t0:.1f} s", flush=True)
        out = Path(tmp) / "report" / "report.html"
        load = os.getloadavg()
        times = []
        for i in range(args.runs):
            times.append(build_once(results, out))
            print(f"run {i + 1}: {times[-1]:.1f} s", flush=True)
        size_mb = out.stat().st_size / 1e6
        n_features = 4 * 5 * args.features_per_region + 5

    median = statistics.median(times)
    ok_time, ok_size = median <= TIME_TARGET_S, size_mb <= SIZE_TARGET_MB
    print(f"median {median:.1f} s (target <= {TIME_TARGET_S:.0f}), size {size_mb:.1f} MB "
          f"(target <= {SIZE_TARGET_MB:.0f})")
    section = "\n".join([
        HEADING, "",
        f"`bench/bench_report.py`: the HTML report for {args.subjects} synthetic subjects (+2 failed "
        f"at ingest) built by `tests/report_fixtures.py`: atlas grid {'x'.join(map(str, args.shape))}, "
        f"QC montage 900x1200 px per subject, {n_features} radiomic feature columns, 3 survival "
        "models x 5 folds. Each run is a fresh Python process (imports included).", "",
        "| measure | value | target | result |", "|---|---|---|---|",
        f"| build time, median of {args.runs} | {median:.1f} s (runs: "
        f"{', '.join(f'{t:.1f}' for t in times)}) | <= {TIME_TARGET_S:.0f} s | "
        f"{'pass' if ok_time else 'FAIL'} |",
        f"| report size | {size_mb:.1f} MB | <= {SIZE_TARGET_MB:.0f} MB | {'pass' if ok_size else 'FAIL'} |",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; measured "
        f"{time.strftime('%Y-%m-%d')}; the machine was shared with other jobs (1-minute load "
        f"average {load[0]:.1f} before and {os.getloadavg()[0]:.1f} after the runs).", ""])
    if not args.no_write:
        update_benchmarks_md(REPO / "docs" / "benchmarks.md", section)
        print("updated docs/benchmarks.md")
    return 0 if ok_time and ok_size else 1


if __name__ == "__main__":
    raise SystemExit(main())
