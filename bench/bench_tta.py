"""Test-time mirroring (segmentation.tta) on a finished main-job run, out of fold.

    python bench/bench_tta.py RESULTS_DIR [--record]

RESULTS_DIR is the results folder of a finished `bench/bench_demo.py` run (or any
run with segmentation.mode: train). Each subject is segmented again by the fold
model that did not train on it (models/segmentation/folds.json), once per
mirroring of FLIP_SETS; the settings none / lr / all average the members they
name, then the pipeline's post-processing applies (islands, small ET), and Dice per region is taken
against the subject's reference labels in atlas space. --threads 1 (the default)
times a member as a segment_subject job of the main job runs it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section  # noqa: E402

from btpipe import SEQUENCES  # noqa: E402
from btpipe import labels as lab  # noqa: E402
from btpipe.config import load_config  # noqa: E402
from btpipe.segment import data as sdata  # noqa: E402
from btpipe.segment.infer import (  # noqa: E402
    probabilities_to_labels, sliding_window_probabilities, tta_flips)
from btpipe.segment.metrics import dice  # noqa: E402
from btpipe.segment.networks import load_model  # noqa: E402

MODES = ("none", "lr", "all")


def load_subject(preproc: Path, labels: str):
    """(normalised images [C, X, Y, Z], reference NIfTI, true regions [3, X, Y, Z]) of one subject."""
    images = [preproc / "norm" / f"{s}.nii.gz" for s in SEQUENCES]
    image, ref_img = sdata.load_images(images, preproc.parent.name)
    truth = lab.labels_to_regions(np.asarray(nib.load(preproc / "reference/seg.nii.gz").dataobj),
                                  labels)
    return image, ref_img, truth


def region_dice(mean, truth, options: dict, labels: str, voxel_mm3: float) -> dict:
    """{region: Dice} of mean probabilities after the pipeline's post-processing."""
    label_map, _, _ = probabilities_to_labels(mean, options, labels, voxel_mm3)
    found = lab.labels_to_regions(label_map, labels)
    return {region: dice(found[i], truth[i]) for i, region in enumerate(lab.REGIONS)}


def subject_dice(model, preproc: Path, options: dict, labels: str) -> tuple[dict, float]:
    """{mode_region: Dice} of one subject and the seconds per member."""
    image, ref_img, truth = load_subject(preproc, labels)
    x = sdata.normalize_channels(image) if model.normalize else image
    module = model.module.eval().to(memory_format=torch.channels_last_3d)
    flips = tta_flips("all", ref_img.affine)
    start = time.perf_counter()
    probs = {axes: sliding_window_probabilities(module, x, model.roi_size, torch.device("cpu"),
                                                options.get("overlap", 0.5),
                                                options.get("sw_batch_size", 2), axes)
             for axes in flips}
    per_member = (time.perf_counter() - start) / len(flips)
    voxel_mm3 = float(np.prod(ref_img.header.get_zooms()[:3]))
    scores = {}
    for mode in MODES:
        mean = np.mean([probs[axes] for axes in tta_flips(mode, ref_img.affine)], axis=0)
        dices = region_dice(mean, truth, options, labels, voxel_mm3)
        scores.update({f"{mode}_{region}": value for region, value in dices.items()})
    return scores, per_member


def out_of_fold_models(results: Path) -> tuple[dict, dict]:
    """({subject: fold}, {fold: model}) of a finished run's fold models."""
    models_dir = results / "models" / "segmentation"
    folds = json.loads((models_dir / "folds.json").read_text())["folds"]
    models = {k: load_model(models_dir / f"fold{k}" / "model.pt", {}) for k in set(folds.values())}
    return folds, models


def evaluate(results: Path, options: dict, labels: str) -> pd.DataFrame:
    folds, models = out_of_fold_models(results)
    rows = []
    for subject, fold in sorted(folds.items()):
        scores, per_member = subject_dice(models[fold], results / "subjects" / subject / "preproc",
                                          options, labels)
        rows.append({"subject": subject, "s_per_member": per_member, **scores})
        print(f"{subject}: WT none {scores['none_WT']:.3f} lr {scores['lr_WT']:.3f} "
              f"all {scores['all_WT']:.3f}", flush=True)
    return pd.DataFrame(rows).set_index("subject")


def section(table: pd.DataFrame, results: Path, threads: int) -> str:
    lines = [f"`python bench/bench_tta.py {results} --threads {threads} --record` "
             f"({datetime.date.today()}, {platform.machine()}): the fold models of a finished main-job run, "
             f"each of the {len(table)} demo subjects segmented by the model that did not "
             "train on it; post-processing as configured; Dice against the reference labels.", "",
             "| tta | members per model | WT | TC | ET | WT min | WT of the worst two |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode in MODES:
        wt = table[f"{mode}_WT"]
        lines.append(f"| {mode} | {len(tta_flips(mode, np.eye(4)))} | {wt.mean():.4f} | "
                     f"{table[f'{mode}_TC'].mean():.4f} | {table[f'{mode}_ET'].mean():.4f} | "
                     f"{wt.min():.3f} | {', '.join(f'{v:.3f}' for v in wt.nsmallest(2))} |")
    lines += ["", f"Seconds per member (one model, one mirroring, {threads} thread(s)): median "
              f"{table['s_per_member'].median():.1f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--config", type=Path, default=None,
                        help="the run's config.yaml (default: beside RESULTS_DIR)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 = as a segment_subject job of the main job)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config or args.results.parent / "config.yaml")
    table = evaluate(args.results, config["segmentation"], config.get("labels", "brats2021"))
    print(table.mean().round(4).to_string())
    if args.record:
        replace_section(REPO / "docs/benchmarks.md", "Test-time mirroring (demo, out of fold)",
                        section(table, args.results, args.threads))


if __name__ == "__main__":
    main()
