"""The survival lab's model set on the demo cohort, 5-fold, through the DAG.

    python bench/bench_survival_lab.py --workdir DIR [--cores 2] [--record]

DIR is a finished `bench/bench_demo.py --workdir DIR` run (its images, slice
bags and feature table are reused). The survival results are removed, then
`snakemake survival` runs with resources/survival/lab_models.yaml on top of
DIR/config.yaml. Prints wall time, per-model job time and mean out-of-fold
Harrell C; --record writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
LAB_MODELS = REPO / "resources/survival/lab_models.yaml"
sys.path.insert(0, str(REPO / "bench"))
from record import benchmark_records, replace_section, timed_snakemake  # noqa: E402


def run_lab(workdir: Path, cores: int) -> float:
    results = workdir / "results"
    shutil.rmtree(results / "survival", ignore_errors=True)
    shutil.rmtree(results / "work" / "encoder_pretraining", ignore_errors=True)
    return timed_snakemake(workdir, "snakemake_lab.out", "--cores", str(cores), "--configfile",
                           str(workdir / "config.yaml"), str(LAB_MODELS), "--", "survival")


def model_table(results: Path) -> pd.DataFrame:
    jobs = benchmark_records(results, "survival_model")
    table = jobs.rename(columns={"job": "model", "s": "job_s"}).set_index("model")[
        ["job_s", "max_rss_mb"]]
    metrics = pd.read_parquet(results / "survival/metrics.parquet")
    c = metrics[metrics.metric == "c_harrell"].groupby("model").value
    table["c_harrell_mean"] = c.mean()
    table["c_harrell_sd"] = c.std()
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    lab = yaml.safe_load(LAB_MODELS.read_text())["survival"]
    models, k = lab["models"], lab["folds"]
    wall = run_lab(workdir, args.cores)
    table = model_table(workdir / "results")
    n = len(pd.read_parquet(workdir / "results/survival/input.parquet"))
    print(f"wall {wall:.0f} s, {len(models)} models, {n} subjects, --cores {args.cores}")
    print(table.to_string())
    if not args.record:
        return
    lines = [f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
             f"{args.cores} cores used), one run. `bench/bench_survival_lab.py`: the "
             f"{len(models)} models of `resources/survival/lab_models.yaml` on the {n}-subject demo "
             f"cohort ({k}-fold, one repeat; images, slice bags and features from a finished "
             "bench_demo run), `snakemake survival` from an empty survival folder.", "",
             f"- wall time: **{wall / 60:.1f} min** (target <= 10 min)", "",
             f"| model | job s | max RSS MB | Harrell C (mean of {k} folds) | sd |",
             "|---|---:|---:|---:|---:|"]
    for model, rec in table.iterrows():
        lines.append(f"| {model} | {rec.job_s:.0f} | {rec.max_rss_mb:.0f} | "
                     f"{rec.c_harrell_mean:.3f} | {rec.c_harrell_sd:.3f} |")
    lines += ["", f"Job times overlap (up to {args.cores} jobs at a time). The C-indices are a "
              f"wiring check: {n} subjects give about {round(n / k)} per test fold."]
    replace_section(REPO / "docs/benchmarks.md", "Survival lab model set (demo cohort)",
                    "\n".join(lines))


if __name__ == "__main__":
    main()
