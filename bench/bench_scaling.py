"""Local scaling: the same reduced demo with `--cores 1` and `--cores 2`.

    python bench/bench_scaling.py [--record]

Runs the CI's tiny configuration (tests/pipeline_helpers.py: 5 demo subjects
at 2x coarser native voxels, 3 mm atlas grid, short training) from a clean
folder with each core count, default (non-deterministic) threading, and
reports wall times, their ratio and where the time goes per rule
(Snakemake benchmark files), which shows what cannot run in parallel.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from bench_demo import per_rule_times  # noqa: E402
from pipeline_helpers import write_config  # noqa: E402
from record import replace_section, timed_snakemake  # noqa: E402


def run(cores: int) -> tuple[float, Path]:
    workdir = Path(tempfile.mkdtemp(prefix=f"btpipe-scaling-{cores}-"))
    write_config(workdir, {"deterministic": False})
    wall = timed_snakemake(workdir, "snakemake.out", "--configfile",
                           str(workdir / "config.yaml"), "--cores", str(cores))
    return wall, workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    walls, times = {}, {}
    for cores in (1, 2):
        walls[cores], workdir = run(cores)
        times[cores] = per_rule_times(workdir / "results")
        print(f"--cores {cores}: {walls[cores]:.0f} s wall, "
              f"{times[cores].total_s.sum():.0f} s of job time", flush=True)
    ratio = walls[1] / walls[2]
    print(f"speed-up 1 -> 2 cores: {ratio:.2f}x")
    table = times[2].join(times[1][["total_s"]], rsuffix="_1core")
    print(table.to_string())
    if args.record:
        lines = [f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, 2 "
                 f"cores), `bench/bench_scaling.py`: the CI's tiny configuration (5 demo "
                 f"subjects, 3 mm atlas grid, 2 folds + final model of 120 steps), "
                 f"`deterministic: false`, clean folder each, one run per core count.", "",
                 f"- `--cores 1`: **{walls[1]:.0f} s**; `--cores 2`: **{walls[2]:.0f} s**; "
                 f"speed-up **{ratio:.2f}x** (ideal 2x).",
                 f"- job time summed over all jobs: {times[1].total_s.sum():.0f} s with 1 core, "
                 f"{times[2].total_s.sum():.0f} s with 2 (rules with `threads: 2` get their "
                 f"second thread only when there is a second core).", "",
                 "| rule | jobs | s per run, 2 cores (sum) | s per run, 1 core (sum) |",
                 "|---|---|---|---|"]
        for rule, rec in table.sort_values("total_s", ascending=False).iterrows():
            lines.append(f"| {rule} | {int(rec.jobs)} | {rec.total_s:.0f} | "
                         f"{rec.total_s_1core:.0f} |")
        replace_section(REPO / "docs/benchmarks.md", "Local scaling (--cores 1 vs 2)",
                        "\n".join(lines))


if __name__ == "__main__":
    main()
