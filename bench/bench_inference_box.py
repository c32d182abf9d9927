"""Inference windows over the whole grid against the brain box, on a finished main-job run.

    python bench/bench_inference_box.py RESULTS_DIR [--config CONFIG] [--threads 1]

Each subject is segmented by the fold model that did not train on it (as bench_tta.py),
with the model's own windows, Gaussian blending, the configured sw_batch_size and
post-processing, in five ways: windows over the whole atlas grid (overlap 0.5, left-right
mirror), and windows only inside the box of non-zero voxels (`infer.content_box`, what
the pipeline does) at overlap 0.5 / 0.25, with and without the mirror. It prints the
seconds of the window passes per subject (median, min, max) and the mean Dice per region.
The figures are in docs/benchmarks/segmentation-experiments.md ("Inference in the brain box").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_tta import load_subject, out_of_fold_models, region_dice  # noqa: E402

from btpipe.config import load_config  # noqa: E402
from btpipe.segment import data as sdata  # noqa: E402
from btpipe.segment.infer import content_box, sliding_window_probabilities, tta_flips  # noqa: E402

# (windows over, overlap, tta)
VARIANTS = [("grid", 0.5, "lr"), ("box", 0.5, "lr"), ("box", 0.25, "lr"),
            ("box", 0.5, "none"), ("box", 0.25, "none")]


def mean_probabilities(module, image, roi, affine, where, overlap, tta, sw_batch_size):
    """Mean probabilities [3, X, Y, Z] over the mirrorings, windows over `where`."""
    box = (slice(None), *(content_box(image) if where == "box" else ()))
    probs = [sliding_window_probabilities(module, image[box], roi, torch.device("cpu"), overlap,
                                          sw_batch_size, axes) for axes in tta_flips(tta, affine)]
    mean = np.zeros((3, *image.shape[1:]), np.float32)
    mean[box] = np.mean(probs, axis=0)
    return mean


def subject_row(model, preproc: Path, options: dict, labels: str) -> dict:
    image, ref_img, truth = load_subject(preproc, labels)
    x = sdata.normalize_channels(image) if model.normalize else image
    module = model.module.eval().to(memory_format=torch.channels_last_3d)
    voxel_mm3 = float(np.prod(ref_img.header.get_zooms()[:3]))
    row = {}
    for where, overlap, tta in VARIANTS:
        key = f"{where} {overlap} {tta}"
        start = time.perf_counter()
        mean = mean_probabilities(module, x, model.roi_size, ref_img.affine, where, overlap, tta,
                                  options.get("sw_batch_size", 2))
        row[f"{key} s"] = time.perf_counter() - start
        row.update({f"{key} {r}": v
                    for r, v in region_dice(mean, truth, options, labels, voxel_mm3).items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--config", type=Path, default=None,
                        help="the run's config.yaml (default: beside RESULTS_DIR)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config or args.results.parent / "config.yaml")
    labels = config.get("labels", "brats2021")
    folds, models = out_of_fold_models(args.results)
    rows = {}
    for subject, fold in sorted(folds.items()):
        rows[subject] = subject_row(models[fold], args.results / "subjects" / subject / "preproc",
                                    config["segmentation"], labels)
        print(subject, {k: round(v, 3) for k, v in rows[subject].items()}, flush=True)
    table = pd.DataFrame.from_dict(rows, orient="index")
    for where, overlap, tta in VARIANTS:
        key = f"{where} {overlap} {tta}"
        secs = table[f"{key} s"]
        print(f"{key}: s median {secs.median():.2f} ({secs.min():.2f}-{secs.max():.2f}); "
              + ", ".join(f"{r} {table[f'{key} {r}'].mean():.3f}" for r in ("WT", "TC", "ET")))


if __name__ == "__main__":
    main()
