"""Radiomics for one BraTS-size subject: 4 sequences x WT/TC/ET, Original.

    python bench/bench_radiomics.py [--repeats 3] [--jobs 1 2] [--record]

Real data: the tcga-fg-6692 scan in BraTS space (skull-stripped, 240x240x155)
with the fused BraTS-2020 algorithms' segmentation as the mask. Target: at
most 20 s on the 2-core machine. Prints the median wall time per n_jobs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section  # noqa: E402

DATA = Path(os.environ.get("BTPIPE_TESTDATA", REPO.parent / "shared" / "data"))
CASE = DATA / "mri/tcga-fg-6692/reference"
IMAGES = {"t1": "t1_bet", "t1ce": "t1c_bet", "t2": "t2_bet", "flair": "fla_bet"}


def run_once(n_jobs: int) -> float:
    from btpipe.features.radiomics import extract_subject

    images = {seq: str(CASE / f"brats_space/{name}.nii.gz") for seq, name in IMAGES.items()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        row = extract_subject("tcga-fg-6692", images,
                              str(CASE / "segmentations/fusion_simple.nii.gz"),
                              params_path=str(REPO / "resources/radiomics/params.yaml"),
                              regions=("WT", "TC", "ET"),
                              brain_mask_path=str(CASE / "brats_space/brain_mask_hdbet.nii.gz"),
                              out_path=Path(tmp) / "r.parquet", n_jobs=n_jobs)
    elapsed = time.perf_counter() - start
    assert row.shape[0] == 1
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    results = {}
    for n_jobs in args.jobs:
        times = [run_once(n_jobs) for _ in range(args.repeats)]
        results[n_jobs] = statistics.median(times)
        print(f"n_jobs={n_jobs}: median {results[n_jobs]:.1f} s over {args.repeats} runs "
              f"({', '.join(f'{t:.1f}' for t in times)})")
    if args.record:
        body = [f"Date {datetime.date.today()}, {platform.node()}, tcga-fg-6692 in BraTS space, "
                f"4 sequences x WT/TC/ET, Original, median of {args.repeats} runs. "
                "Target <= 20 s.", "", "| n_jobs | median wall s |", "|---|---|"]
        body += [f"| {n} | {t:.1f} |" for n, t in results.items()]
        body += ["", "The cohort rule runs one job per subject, so it scales with "
                 "`--cores` (one core per job)."]
        replace_section(REPO / "docs/benchmarks.md", "Radiomics (one subject)", "\n".join(body))


if __name__ == "__main__":
    main()
