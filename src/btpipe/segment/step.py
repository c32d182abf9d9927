"""The segmentation stage's workflow steps: files in, files out (called by workflow/scripts)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import io
from ..config import config_digest
from .infer import labels_as_segmentation, segment_subject
from .metrics import cohort_tables
from .options import RUNTIME
from .train import train_model


def training_items(subjects, images, labels) -> list[dict]:
    """Training items from flat file lists in subject order (the same number of images each)."""
    per = len(images) // max(1, len(subjects))
    return [{"subject": s, "image": images[i * per:(i + 1) * per], "label": labels[i]}
            for i, s in enumerate(subjects)]


def seg_train_step(train, monitor, images, labels, model_path, options, seed, work_dir,
                   cache_dir=None):
    """Train one fold's model (or the final one). Checkpoints go to a work
    folder keyed by the training set and options, so a rerun resumes only a
    run that would produce the same model; the subjects' compact training
    inputs go to ``cache_dir``, shared by the fold models."""
    items = training_items(train + monitor, images, labels)
    defining = {k: v for k, v in options.items() if k not in RUNTIME}
    key = config_digest({"train": train, "monitor": monitor, "options": defining, "seed": seed})
    train_model(items[:len(train)], items[len(train):], Path(model_path).parent, options,
                seed=seed, work_dir=Path(work_dir) / key, cache_dir=cache_dir)


def segment_step(subject, model_paths, images, native_dir, preproc_dir, outputs, options,
                 provided=()):
    """Segment in atlas space (model ensemble, or the subject's expert labels when
    ``provided`` names them), then map the labels back onto the native T1ce grid."""
    from ..preprocess import labels_to_native  # ANTs: loaded by inference jobs only

    out_dir = Path(outputs["seg"]).parent
    if provided:
        labels_as_segmentation(provided[0], out_dir, labels=options["labels"], subject=subject)
    else:
        segment_subject(list(model_paths), images, out_dir, options, labels=options["labels"],
                        subject=subject)
    labels_to_native(outputs["seg"], preproc_dir, Path(native_dir) / "t1ce.nii.gz",
                     outputs["seg_native"])


def seg_cohort_step(subjects, metric_paths, models, log_paths, outputs):
    """cohort/seg_metrics.parquet and seg_summary.parquet from the subjects' metrics.json
    (in ``subjects`` order), and one training log with a ``model`` column (``models`` order)."""
    metrics, summary = cohort_tables(dict(zip(subjects, metric_paths)))
    io.write_parquet(outputs["metrics"], metrics)
    io.write_parquet(outputs["summary"], summary)
    logs = [pd.read_csv(p).assign(model=m) for m, p in zip(models, log_paths)]
    merged = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame(columns=["model", "step"])
    io.write_csv(outputs["training_log"], merged)
