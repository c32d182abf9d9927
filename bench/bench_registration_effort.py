"""Same-session registration against the demo's planted motion, per registration effort.

    python bench/bench_registration_effort.py WORKDIR [--subjects 8] [--record]

WORKDIR is a finished `bench/bench_demo.py` folder (its `demo/truth/*/truth.json`
and `results/subjects/*/nifti`). The demo moves every series by a small rigid
motion of its own (`series[].motion_lps` in truth.json), so the true T1ce -> T2
transform is known: motion_t2 @ inv(motion_t1ce). Each effort below runs the
pipeline's own steps (N4 of every sequence, the deepbet mask, the same-session
pairs of `register_sequence_pairs`) on one thread; the error of a pair is the mean
distance, over the T1ce's brain voxels, between where the found and the true
transform send them (and the angle between the two). Seconds: N4 of the four
sequences, and the three pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # before ANTs loads

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section  # noqa: E402

from btpipe import SEQUENCES  # noqa: E402
from btpipe.demo.generate import planted_sequence_transforms  # noqa: E402
from btpipe.preprocess import register as reg  # noqa: E402
from btpipe.preprocess.pipeline import (  # noqa: E402
    OTHER_SEQUENCES, REGISTRATION_EFFORTS, Registrar, load_sequences, register_sequence_pairs)
from btpipe.preprocess.skullstrip import deepbet_mask  # noqa: E402

FAST = REGISTRATION_EFFORTS["fast"]
EFFORTS = {
    "fast": FAST,
    "fast until 2026-12-07 (pairs on 2 levels, N4 fit 6 mm)":
        dataclasses.replace(FAST, sequence_iterations=(100, 50), n4_fit_mm=6.0),
    "standard": REGISTRATION_EFFORTS["standard"],
}


def pair_error(found, true, points) -> tuple[float, float]:
    """(mean distance in mm over ``points``, rotation angle in degrees) between two transforms."""
    return reg.mean_distance(found, true, points), reg.rigid_residual(np.linalg.inv(found) @ true)[0]


def subject_rows(workdir: Path, subject: str) -> list[dict]:
    truth = json.loads((workdir / "demo/truth" / subject / "truth.json").read_text())
    true = planted_sequence_transforms(truth)
    images = load_sequences(subject, workdir / "results/subjects" / subject / "nifti")
    lps = {s: reg.to_lps(images[s]) for s in SEQUENCES}
    native = {s: reg.nib_to_ants(lps[s]) for s in SEQUENCES}
    mask = np.asarray(deepbet_mask(lps["t1ce"]).dataobj) > 0
    mask_native = native["t1ce"].new_image_like(mask.astype(np.float32))
    points = reg.voxel_points_lps(lps["t1ce"].affine, mask, every=50)
    rows = []
    for name, effort in EFFORTS.items():
        start = time.perf_counter()
        n4 = {s: reg.n4(native[s], fit_mm=effort.n4_fit_mm) for s in SEQUENCES}
        n4_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            register_sequence_pairs(n4, mask_native, Registrar("ants", effort, 0, 1, Path(work)),
                                    work)
            pairs_s = time.perf_counter() - start
            for s in OTHER_SEQUENCES:
                found = reg.matrix_of(Path(work) / f"{s}_to_t1ce.mat")
                mm, deg = pair_error(found, true[s], points)
                rows.append({"subject": subject, "effort": name, "pair": f"{s}_to_t1ce",
                             "error_mm": mm, "error_deg": deg,
                             "planted_mm": reg.mean_distance(np.eye(4), true[s], points),
                             "n4_s": n4_s, "pairs_s": pairs_s})
    return rows


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    per_subject = frame.groupby(["effort", "subject"])[["n4_s", "pairs_s"]].first()
    errors = frame.groupby("effort").agg(pairs=("error_mm", "size"),
                                         mean_mm=("error_mm", "mean"), max_mm=("error_mm", "max"),
                                         mean_deg=("error_deg", "mean"))
    return errors.join(per_subject.groupby("effort").median()).loc[list(EFFORTS)]


def record_lines(frame: pd.DataFrame, table: pd.DataFrame, n_subjects: int) -> list[str]:
    lines = [f"Date {datetime.date.today()}, {platform.node()} ({os.cpu_count()} CPUs, one thread), "
             f"{n_subjects} demo subjects (voxel_scale {frame.attrs['voxel_scale']}), planted "
             f"motion {frame.planted_mm.mean():.2f} mm on average at brain voxels.", "",
             "| effort | pairs | mean error mm | max error mm | mean error deg | "
             "N4 s per subject (median) | pairs s per subject (median) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {int(r.pairs)} | {r.mean_mm:.3f} | {r.max_mm:.3f} | {r.mean_deg:.3f} | "
              f"{r.n4_s:.1f} | {r.pairs_s:.1f} |" for name, r in table.iterrows()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    subjects = sorted(p.name for p in (args.workdir / "demo/truth").iterdir())[:args.subjects]
    frame = pd.DataFrame([row for s in subjects for row in subject_rows(args.workdir, s)])
    truth = json.loads((args.workdir / "demo/truth" / subjects[0] / "truth.json").read_text())
    frame.attrs["voxel_scale"] = truth["voxel_scale"]
    lines = record_lines(frame, summary(frame), len(subjects))
    print("\n".join(lines))
    if args.record:
        replace_section(REPO / "docs/benchmarks.md", "Same-session registration against planted motion",
                        "\n".join(lines))


if __name__ == "__main__":
    main()
