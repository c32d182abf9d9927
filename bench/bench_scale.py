"""BraTS-scale evidence: training memory against cohort size, and DAG planning for 369 subjects.

    python bench/bench_scale.py [--sizes 8 32 128] [--steps 6] [--workdir DIR] [--record]

1. Writes BraTS-size synthetic subjects (240x240x155, four sequences + labels, BraTS 2020
   names; btpipe.demo.brats) and trains one segmentation model on the first N of them for
   each N in --sizes, in a fresh process each: SegResNet init 16, 128^3 patches, batch 2
   (the recipes' network), on the CPU (or the GPU when --device cuda). Records the peak RSS
   of the process (VmHWM, training-input cache writing included), the seconds per
   training step (median over the steps after the first) and the seconds spent writing the
   compact training inputs.
2. Plans the BraTS 2020 recipe on a folder of 369 cases and a 236-row survival table
   (placeholder 2x2x2 images: a dry run reads names, not voxels): job count per rule and
   the dry run's wall time (median of --dag-runs).
3. Runs the per-subject stages of the BraTS 2020 recipe (1 mm, full radiomics, 224 px slice
   bags) on --stage-subjects synthetic cases with their expert labels as the segmentation
   (segmentation.mode provided; survival off) and reports Snakemake's run time per job.
With --record the figures replace the "Scale" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import benchmark_records, replace_section, run_json_script, timed_snakemake  # noqa: E402

ATLAS_DIR = REPO / "resources" / "atlas" / "sri24"

TRAIN = """
import json, sys, time, torch
from pathlib import Path
import pandas as pd
from btpipe.segment import train
items, out, cache, steps, device, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
params = {"init_filters": 16, "roi_size": [128, 128, 128], "batch_size": 2, "max_steps": steps,
          "val_every": 10 ** 6, "device": device}
start = time.perf_counter()
train.train_model(items, [], out, params, seed=0, cache_dir=cache)
wall = time.perf_counter() - start
seconds = pd.read_csv(Path(out) / "training_log.csv")["seconds"].to_numpy()
step_s = list((seconds[1:] - seconds[:-1]).round(3))
peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_gb": peak_kb / 2 ** 20, "step_s": step_s, "wall_s": wall,
                  "train_s": float(seconds[-1])}))
"""


def brats_items(data_dir: Path, n: int) -> list[dict]:
    """Training items for the first ``n`` synthetic cases (written when missing)."""
    from btpipe.demo.brats import Anatomy, case_id, write_case

    anatomy = None
    items = []
    for index in range(1, n + 1):
        subject = case_id("2020", index)
        folder = data_dir / subject
        if not (folder / f"{subject}_seg.nii.gz").exists():
            anatomy = anatomy or Anatomy.from_atlas(ATLAS_DIR)
            write_case(data_dir, "2020", index, anatomy, seed=0)
        items.append({"subject": subject,
                      "image": [str(folder / f"{subject}_{s}.nii.gz") for s in ("t1", "t1ce", "t2", "flair")],
                      "label": str(folder / f"{subject}_seg.nii.gz")})
    return items


def training_scale(workdir: Path, sizes, steps: int, device: str, threads: int) -> list[dict]:
    items = brats_items(workdir / "data", max(sizes))
    rows = []
    for n in sizes:
        cache = workdir / "cache"
        before = len(list(cache.glob("*-*"))) if cache.exists() else 0
        out = run_json_script(TRAIN, json.dumps([items[:n], str(workdir / f"model_{n}"), str(cache),
                                                 steps, device, threads]))
        cached = len(list(cache.glob("*-*"))) - before
        rows.append({"subjects": n, "peak_gb": out["peak_gb"],
                     "step_s": statistics.median(out["step_s"]), "wall_s": out["wall_s"],
                     "cache_s": out["wall_s"] - out["train_s"], "newly_cached": cached})
        print(rows[-1], flush=True)
    return rows


def placeholder_brats_folder(root: Path, n: int, with_outcome: int) -> Path:
    """``n`` BraTS 2020 case folders of 2x2x2 images and a survival table for the first ones."""
    import nibabel as nib
    import pandas as pd

    from btpipe.demo.brats import NAMINGS, case_id

    data = root / "MICCAI_BraTS2020_TrainingData"
    tiny = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    rows = []
    for index in range(1, n + 1):
        subject = case_id("2020", index)
        (data / subject).mkdir(parents=True, exist_ok=True)
        for suffix in NAMINGS["2020"].suffixes:
            nib.save(tiny, data / subject / f"{subject}{suffix}.nii.gz")
        if index <= with_outcome:
            rows.append({"Brats20ID": subject, "Age": 60.0, "Survival_days": 300 + index,
                         "Extent_of_Resection": "GTR"})
    pd.DataFrame(rows).to_csv(data / "survival_info.csv", index=False)
    return data


def job_counts(text: str) -> dict[str, int]:
    counts, table = {}, False
    for line in text.splitlines():
        if re.match(r"^job\s+count", line.strip()):
            table = True
        elif table and (m := re.match(r"^\s*([A-Za-z_]\w*)\s+(\d+)\s*$", line)):
            counts[m.group(1)] = int(m.group(2))
    return counts


def dag_planning(workdir: Path, n: int, with_outcome: int, runs: int) -> dict:
    data = placeholder_brats_folder(workdir / "dag", n, with_outcome)
    run_dir = workdir / "dag" / "run"
    recipe_config(data, run_dir, {"clinical": str(data / "survival_info.csv")})
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(REPO / "Snakefile"),
           "-d", str(run_dir), "--configfile", str(run_dir / "config.yaml"), "-n", "--cores", "8"]
    walls, text = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
        text = proc.stdout + proc.stderr
    counts = job_counts(text)
    return {"subjects": n, "with_outcome": with_outcome, "walls": walls,
            "median_s": statistics.median(walls), "jobs": counts}


def recipe_config(data: Path, run_dir: Path, overrides: dict) -> Path:
    """The BraTS 2020 recipe for ``data`` with absolute resource paths, written into run_dir."""
    from btpipe.config import deep_update

    config = yaml.safe_load((REPO / "recipes" / "brats2020_os.yaml").read_text())
    config = deep_update(config, {"brats_dir": str(data), **overrides})
    config["atlas"] = {**config.get("atlas", {}), "path": str(ATLAS_DIR / "t1_brain.nii.gz")}
    config["radiomics"]["params"] = str(REPO / config["radiomics"]["params"])
    config["ingest"] = {"rules": str(REPO / "resources" / "ingest" / "sequence_rules.yaml")}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_dir / "config.yaml"


def stage_times(workdir: Path, n: int, cores: int) -> list[dict]:
    """Per-rule seconds (median per job) of the recipe's per-subject stages on ``n`` cases."""
    data = workdir / "data"
    brats_items(data, n)
    stage_data = workdir / "stages" / "data"
    stage_data.mkdir(parents=True, exist_ok=True)
    for index in range(1, n + 1):  # the first n cases only, linked, not copied
        from btpipe.demo.brats import case_id

        link = stage_data / case_id("2020", index)
        if not link.exists():
            link.symlink_to(data / case_id("2020", index), target_is_directory=True)
    run_dir = workdir / "stages" / "run"
    recipe_config(stage_data, run_dir, {"segmentation": {"mode": "provided"},
                                        "survival": {"enabled": False}, "results_dir": "results"})
    wall = timed_snakemake(run_dir, "snakemake.log", "--configfile", str(run_dir / "config.yaml"),
                           "--cores", str(cores), "report")
    frame = benchmark_records(run_dir / "results")
    rows = [{"rule": rule, "jobs": len(part), "median_s": float(part["s"].median()),
             "max_rss_gb": float(part["max_rss_mb"].max()) / 1024}
            for rule, part in frame.groupby("rule")]
    return rows + [{"rule": "(whole run)", "jobs": n, "median_s": wall, "max_rss_gb": float("nan")}]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def report(train_rows, dag, stages, steps, device, threads, loads) -> str:
    lines = [f"Date {datetime.date.today()}, {machine()}, torch threads {threads}, device {device}; "
             f"1-min load average {loads[0]:.1f} before, {loads[1]:.1f} after. "
             f"`bench/bench_scale.py`: synthetic BraTS 2020 cases (240x240x155, four sequences "
             f"+ labels, `btpipe.demo.brats`); one `seg_train` process per cohort size: "
             f"SegResNet init 16, 128^3 patches, batch 2, {steps} steps, no validation.", "",
             "| subjects | peak RSS GB | s per step (median) | writing training inputs s | newly cached |",
             "|---|---|---|---|---|"]
    for r in train_rows:
        lines.append(f"| {r['subjects']} | {r['peak_gb']:.2f} | {r['step_s']:.2f} | "
                     f"{r['cache_s']:.0f} | {r['newly_cached']} |")
    first, last = train_rows[0], train_rows[-1]
    ratio = last["peak_gb"] / first["peak_gb"]
    lines += ["", f"Peak RSS {last['subjects']} vs {first['subjects']} subjects: **{ratio:.2f}x** "
              f"(target <= 1.2x: {'met' if ratio <= 1.2 else 'not met'}); largest "
              f"**{max(r['peak_gb'] for r in train_rows):.2f} GB** (target <= 6 GB on CPU: "
              f"{'met' if max(r['peak_gb'] for r in train_rows) <= 6 else 'not met'}).", ""]
    jobs = dag["jobs"]
    lines += [f"DAG of the BraTS 2020 recipe for {dag['subjects']} subjects ({dag['with_outcome']} "
              f"with survival; placeholder images): **{jobs.get('total', sum(jobs.values()))} jobs**; "
              f"dry-run planning **{dag['median_s']:.1f} s** (median of {len(dag['walls'])}: "
              f"{', '.join(f'{w:.1f}' for w in dag['walls'])}; target <= 60 s: "
              f"{'met' if dag['median_s'] <= 60 else 'not met'}).", "",
              "| rule | jobs |", "|---|---|"]
    lines += [f"| {rule} | {count} |" for rule, count in jobs.items() if rule != "total"]
    lines += ["", "Per-subject stages of the BraTS 2020 recipe (1 mm grid, LoG + wavelet radiomics on "
              "4 sequences x 5 regions, 224 px slice bags), expert labels as the segmentation, "
              "survival off; Snakemake benchmark records, median per job:", "",
              "| rule | jobs | s per job (median) | max RSS GB |", "|---|---|---|---|"]
    lines += [f"| {r['rule']} | {r['jobs']} | {r['median_s']:.1f} | {r['max_rss_gb']:.2f} |"
              for r in stages]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dag-subjects", type=int, default=369)
    parser.add_argument("--dag-outcomes", type=int, default=236)
    parser.add_argument("--dag-runs", type=int, default=3)
    parser.add_argument("--stage-subjects", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    load_before = os.getloadavg()[0]
    train_rows = training_scale(workdir, sorted(args.sizes), args.steps, args.device, args.threads)
    dag = dag_planning(workdir, args.dag_subjects, args.dag_outcomes, args.dag_runs)
    print(json.dumps(dag, indent=1))
    stages = stage_times(workdir, args.stage_subjects, os.cpu_count() or 1)
    text = report(train_rows, dag, stages, args.steps, args.device, args.threads,
                  (load_before, os.getloadavg()[0]))
    print(text)
    if args.record:
        replace_section(REPO / "docs" / "benchmarks.md", "Scale (BraTS-size cohorts)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
