"""One fold model of the demo, trained as the pipeline trains it, scored out of fold.

    python bench/bench_seg_budget.py RESULTS_DIR [--fold 0] [--set KEY=VALUE ...]
                                     [--slowdown F] [--threads 1] [--label NAME]
                                     [--csv OUT.csv]

RESULTS_DIR is the results folder of a run that got as far as preprocessing
(atlas-space images and reference labels). The segmentation options are the
shipped config.yaml's, changed by --set (e.g. --set roi_size=[40,40,40]
--set max_steps=800 --set time_budget_min=3). The fold split is the
pipeline's (`assign_folds` over the labelled subjects, config.yaml's folds and
seed); fold K's model trains on the other subjects, monitors on fold K, and
then segments fold K's subjects with the configured inference (test-time
mirroring, post-processing); Dice per region against the reference labels.

--slowdown F simulates a CPU F times slower for training: each optimiser step
and each validation pass sleeps (F - 1) times its own duration, so the time
budget sees a slow machine's clock (the bench's knob only; the library has
none). It prints (and appends to --csv) steps run, why training stopped,
training wall and CPU seconds, seconds per step and the held-out Dice.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

from btpipe import SEQUENCES  # noqa: E402
from btpipe.segment import train  # noqa: E402
from btpipe.segment.folds import assign_folds  # noqa: E402
from btpipe.segment.infer import segment_subject  # noqa: E402
from btpipe.segment.metrics import score_files  # noqa: E402


def labelled_subjects(results: Path) -> list[str]:
    return sorted(p.parents[2].name for p in results.glob("subjects/*/preproc/reference/seg.nii.gz"))


def item(results: Path, subject: str) -> dict:
    preproc = results / "subjects" / subject / "preproc"
    return {"subject": subject, "image": [str(preproc / "norm" / f"{s}.nii.gz") for s in SEQUENCES],
            "label": str(preproc / "reference" / "seg.nii.gz")}


def slowed(function, factor: float):
    """`function` taking `factor` times its own wall time (a slower CPU's clock)."""
    def run(*args, **kwargs):
        start = time.perf_counter()
        out = function(*args, **kwargs)
        time.sleep((factor - 1.0) * (time.perf_counter() - start))
        return out
    return run


def parse_sets(pairs) -> dict:
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def run(results: Path, fold: int, options: dict, seed: int, labels: str, folds: int,
        slowdown: float) -> dict:
    split = assign_folds(labelled_subjects(results), folds, seed)
    held_out = sorted(s for s, f in split.items() if f == fold)
    training = sorted(s for s, f in split.items() if f != fold)
    if slowdown > 1:
        train._optimiser_step = slowed(train._optimiser_step, slowdown)
        train.validate = slowed(train.validate, slowdown)
    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        out = Path(tmp)
        cpu, wall = time.process_time(), time.perf_counter()
        model = train.train_model([item(results, s) for s in training],
                                  [item(results, s) for s in held_out], out / "model",
                                  {**options, "labels": labels}, seed=seed)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        summary = json.loads((out / "model" / "training.json").read_text())
        scores = []
        for subject in held_out:
            seg = segment_subject([model], item(results, subject)["image"], out / subject, options,
                                  labels=labels, subject=subject)
            score = score_files(seg["seg"], item(results, subject)["label"], labels)
            scores.append({r: score[r]["dice"] for r in ("WT", "TC", "ET")})
    dice = pd.DataFrame(scores).mean()
    return {"fold": fold, "n_train": len(training), "n_held_out": len(held_out),
            "steps": summary["steps"], "stopped_by": summary["stopped_by"],
            "train_job_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
            "loop_s": summary["seconds"], "s_per_step": summary["seconds_per_step"],
            "WT": round(dice["WT"], 4), "TC": round(dice["TC"], 4), "ET": round(dice["ET"], 4),
            "WT_min": round(pd.DataFrame(scores)["WT"].min(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="segmentation option over config.yaml's (YAML value)")
    parser.add_argument("--slowdown", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("btpipe.progress").setLevel(logging.INFO)   # step, loss, ETA on stderr
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    changes = parse_sets(args.set)
    options = {**config["segmentation"], **changes, "deterministic": False}
    row = {"label": args.label or " ".join(args.set or []) or "shipped",
           "slowdown": args.slowdown, "threads": args.threads, "machine": platform.node(),
           "date": time.strftime("%Y-%m-%d %H:%M"),
           **run(args.results, args.fold, options, config["seed"], config["labels"],
                 config["segmentation"]["folds"], args.slowdown)}
    print(json.dumps(row))
    if args.csv:
        frame = pd.DataFrame([row])
        frame.to_csv(args.csv, mode="a", header=not args.csv.exists(), index=False)


if __name__ == "__main__":
    sys.exit(main())
