"""The main job on the default config, from a clean results folder.

    python bench/bench_demo.py [--cores 2] [--subjects 24] [--workdir DIR]

Runs `snakemake --cores N` on a copy of config.yaml in a fresh folder (so the
demo cohort and results are built from scratch; install excluded), then
prints wall time, per-rule run times (Snakemake benchmark files: sum and
median per job, max RSS) and the demo accuracy figures the report shows.
With --record, the figures are written into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import benchmark_records, replace_section, timed_snakemake  # noqa: E402


def absolute_resources(config: dict) -> dict:
    for section, key in (("atlas", "path"), ("ingest", "rules"), ("radiomics", "params")):
        config[section][key] = str(REPO / config[section][key])
    return config


def run(workdir: Path, cores: int, subjects: int) -> float:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = absolute_resources(config)
    config["demo"]["subjects"] = subjects
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return timed_snakemake(workdir, "snakemake.out", "--cores", str(cores))


def per_rule_times(results: Path) -> pd.DataFrame:
    frame = benchmark_records(results)
    return frame.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                     median_s=("s", "median"), max_rss_mb=("max_rss_mb", "max"))


def accuracy(results: Path) -> dict:
    qc = pd.read_parquet(results / "cohort/qc.parquet")
    seg = pd.read_parquet(results / "cohort/seg_metrics.parquet")
    wt = seg[(seg.region == "WT") & (seg.metric == "dice")].value
    surv = pd.read_parquet(results / "survival/metrics.parquet")
    c = surv[surv.metric == "c_harrell"].groupby("model").value.mean()
    return {"brain_mask_dice_mean": qc.brain_mask_dice_reference.mean(),
            "brain_mask_dice_min": qc.brain_mask_dice_reference.min(),
            "wt_dice_mean": wt.mean(), "wt_dice_median": wt.median(),
            **{f"c_harrell_{m}": v for m, v in c.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="btpipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    wall = run(workdir, args.cores, args.subjects)
    times = per_rule_times(workdir / "results")
    acc = accuracy(workdir / "results")
    print(f"wall {wall:.0f} s with --cores {args.cores}, {args.subjects} subjects")
    print(times.to_string())
    print(acc)
    if args.record:
        lines = [f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
                 f"{args.cores} cores used), {args.subjects} demo subjects, one run "
                 f"(a full run is the unit; repeat to get a median).", "",
                 f"- wall time from a clean results folder: **{wall / 60:.1f} min** "
                 f"(target <= 25 min)", "",
                 "| rule | jobs | total s | median s/job | max RSS MB |", "|---|---|---|---|---|"]
        for rule, rec in times.iterrows():
            lines.append(f"| {rule} | {rec.jobs} | {rec.total_s:.0f} | {rec.median_s:.1f} | "
                         f"{rec.max_rss_mb:.0f} |")
        lines += ["", "Demo accuracy (out-of-fold): " +
                  ", ".join(f"{k} {v:.3f}" for k, v in acc.items())]
        replace_section(REPO / "docs/benchmarks.md", f"Main job (--cores {args.cores})",
                        "\n".join(lines))


if __name__ == "__main__":
    main()
