"""Step functions called by workflow/scripts: each reads paths, calls the
stage libraries and writes its outputs atomically. They hold the cohort glue
(which subject, which reference) so the rules and scripts stay thin.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from . import io
from .errors import InputError

log = logging.getLogger("btpipe")


# --- ingest ----------------------------------------------------------------

def ingest_step(subject, inputs, out_dir, rules_path, missing_sequence="fail") -> dict:
    """Ingest one subject; bad input is recorded in ingest.json (status failed,
    error naming subject and file) instead of stopping the whole run."""
    from .ingest import ingest_subject

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = ingest_subject(subject, inputs, out_dir, rules_path,
                                missing_sequence=missing_sequence)
        record = {"subject": subject, "status": "ok", "error": None, **report}
    except InputError as exc:
        log.error("ingest failed: %s", exc)
        # Drop whatever this attempt left so downstream never sees half a subject.
        for child in out_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        record = {"subject": subject, "status": "failed", "error": str(exc),
                  "file": exc.path}
    io.write_json(out_dir / "ingest.json", record)
    return record


def ingest_summary(nifti_dirs, subjects, out_path) -> pd.DataFrame:
    rows = []
    for subject, folder in zip(subjects, nifti_dirs):
        rec = io.read_json(Path(folder) / "ingest.json")
        rows.append({"subject": subject, "status": rec.get("status"),
                     "error": rec.get("error"), "file": rec.get("file"),
                     "warnings": "; ".join(map(str, rec.get("warnings", []) or []))})
    frame = pd.DataFrame(rows, columns=["subject", "status", "error", "file", "warnings"])
    io.write_parquet(out_path, frame)
    return frame


# --- preprocessing QC --------------------------------------------------------

def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def qc_cohort_step(qc_paths, mask_paths, reference_paths, out_path) -> pd.DataFrame:
    """cohort/qc.parquet, with the brain-mask Dice against a reference mask
    (e.g. the demo's truth) where one was given."""
    from .preprocess import cohort_qc

    frame = cohort_qc(qc_paths)
    refs = {Path(p).parts[-4]: p for p in reference_paths}  # .../{subject}/preproc/reference/x
    dices = {}
    for mask_path in mask_paths:
        subject = Path(mask_path).parts[-3]
        if subject in refs:
            dices[subject] = dice(nib.load(mask_path).get_fdata() > 0,
                                  nib.load(refs[subject]).get_fdata() > 0)
    frame["brain_mask_dice_reference"] = frame["subject"].map(dices).astype(float)
    io.write_parquet(out_path, frame)
    return frame


def reference_to_atlas_step(native_path, preproc_dir, out_path, labels=None, subject=None):
    """Expert labels / reference mask into atlas space (nearest neighbour).
    Atlas-space inputs have identity transforms, so this only regrids them.
    With `labels` (the convention of expert labels; None for a brain mask),
    values outside it are rejected before anything is written: InputError
    naming the subject (default: the folder above preproc_dir) and the file."""
    from .labels import unexpected_values
    from .preprocess import labels_to_atlas

    if labels is not None and Path(native_path).is_file():
        bad = unexpected_values(np.rint(np.asanyarray(nib.load(str(native_path)).dataobj)),
                                labels)
        if bad:
            raise InputError(f"expert labels hold values {bad} outside the label convention "
                             f"{labels!r} (config 'labels')",
                             subject=subject or Path(preproc_dir).parent.name, path=native_path)
    labels_to_atlas(native_path, preproc_dir, out_path)


# --- survival table --------------------------------------------------------

def survival_table_step(config, ingest_path, features_path, qc_path, out_table, out_excluded):
    """Clinical columns + image features for the subjects that passed ingest,
    minus those whose QC flags the config excludes (listed with the reason)."""
    from .samples import load_samples

    ingest = pd.read_parquet(ingest_path)
    subjects = set(ingest.loc[ingest["status"] == "ok", "subject"])
    surv = config["survival"]
    samples = load_samples(config).reset_index(drop=True)
    keep = ["subject", surv["time"], *( [surv["event"]] if surv.get("event") else []),
            *surv["covariates"]]
    if "extent_of_resection" in samples.columns and "extent_of_resection" not in keep:
        keep.append("extent_of_resection")
    missing = [c for c in keep if c not in samples.columns]
    if missing:
        raise InputError(f"survival columns {missing} are not in the samples sheet",
                         path=config.get("samples"))
    table = samples[keep].copy()
    table = table[table["subject"].isin(subjects)]
    if surv["features"] == "radiomics":
        feats = pd.read_parquet(features_path)
        table = table.merge(feats, on="subject", how="left")
    qc = pd.read_parquet(qc_path)
    excluded = _qc_excluded(qc, surv["exclude_qc_flags"])
    table = table[~table["subject"].isin(excluded)]
    io.write_parquet(out_table, table.reset_index(drop=True))
    io.write_json(out_excluded, {"excluded": excluded,
                                 "flags_excluded": surv["exclude_qc_flags"]})
    return table


def _qc_excluded(qc: pd.DataFrame, flags) -> dict[str, list[str]]:
    excluded = {}
    for _, rec in qc.iterrows():
        have = [f for f in str(rec.get("flags") or "").split(";") if f]
        hit = sorted(set(have) & set(flags))
        if hit:
            excluded[rec["subject"]] = hit
    return excluded


def survival_inputs(table_path, survival):
    """(X, y, ids, feature columns) from the survival table."""
    from .survival.data import prepare_table

    table = pd.read_parquet(table_path)
    covariates = list(survival["covariates"])
    if "extent_of_resection" in table.columns and "extent_of_resection" not in covariates:
        covariates.append("extent_of_resection")
    features = [c for c in table.columns
                if c not in {"subject", survival["time"], survival.get("event")} | set(covariates)]
    return prepare_table(table, survival["time"], survival.get("event"),
                         covariates=covariates, feature_cols=features)


def json_dump(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def survival_folds_step(table_path, survival, seed, out_path):
    from .survival.folds import folds_and_holdout, write_folds

    _, y, ids = survival_inputs(table_path, survival)[:3]
    folds, holdout = folds_and_holdout(y, ids, survival, seed)
    write_folds(out_path, folds, holdout)


def survival_model_step(name, table_path, folds_path, survival, seed, out_dir):
    from .survival.folds import read_folds
    from .survival.lab import run_model

    X, y, ids = survival_inputs(table_path, survival)[:3]
    folds, holdout = read_folds(folds_path)
    run_model(name, X, y, ids, folds, out_dir, survival, seed, holdout_ids=holdout)


# --- segmentation --------------------------------------------------------------

def _items(subjects, images, labels, n_channels):
    return [{"subject": s, "image": images[i * n_channels:(i + 1) * n_channels],
             "label": labels[i]} for i, s in enumerate(subjects)]


def seg_train_step(train, monitor, images, labels, model_path, options, seed, work_dir):
    """Train one fold's model (or the final one). Checkpoints go to a work
    folder keyed by the training set and options, so a rerun resumes only a
    run that would produce the same model."""
    from .config import config_digest
    from .segment.train import train_model

    items = _items(train + monitor, images, labels, len(images) // max(1, len(train + monitor)))
    key = config_digest({"train": train, "monitor": monitor, "options": options, "seed": seed})
    train_model(items[:len(train)], items[len(train):], Path(model_path).parent, options,
                seed=seed, work_dir=Path(work_dir) / key)


def segment_step(subject, model_path, images, native_dir, preproc_dir, outputs, options):
    """Segment in atlas space, then map the labels back onto the native T1ce grid."""
    from .preprocess import labels_to_native
    from .segment.infer import segment_subject

    segment_subject([model_path], images, Path(outputs["seg"]).parent, options,
                    labels=options["labels"], subject=subject)
    labels_to_native(outputs["seg"], preproc_dir, Path(native_dir) / "t1ce.nii.gz",
                     outputs["seg_native"])


def seg_cohort_step(metric_paths, log_paths, outputs):
    from .segment.metrics import cohort_tables

    by_subject = {Path(p).parts[-3]: p for p in metric_paths}
    metrics, summary = cohort_tables(by_subject)
    io.write_parquet(outputs["metrics"], metrics)
    io.write_parquet(outputs["summary"], summary)
    logs = [pd.read_csv(p).assign(model=Path(p).parent.name) for p in log_paths]
    merged = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame(columns=["model", "step"])
    io.write_csv(outputs["training_log"], merged)


def survival_image_model_step(name, table_path, folds_path, survival, seed, out_dir,
                              results_dir):
    """Slice-bag or 3D model on the same folds; images read from results_dir."""
    from .survival.folds import read_folds
    from .survival.mil import run_bag_model
    from .survival.models import MODELS
    from .survival.volumes import default_volume_paths, run_volume_model

    _, y, ids = survival_inputs(table_path, survival)[:3]
    folds, holdout = read_folds(folds_path)
    if MODELS[name].input == "bags":
        paths = {s: str(Path(results_dir) / "subjects" / s / "slices.npz") for s in ids}
        run_bag_model(name, paths, y, ids, folds, out_dir, survival, seed,
                      pretrain_cache=Path(results_dir) / "work" / "encoder_pretraining",
                      holdout_ids=holdout)
    else:
        run_volume_model(name, default_volume_paths(results_dir, ids), y, ids, folds, out_dir,
                         survival, seed, holdout_ids=holdout)


def survival_summary_step(model_dirs, out_dir, table_path, survival, seed):
    """metrics, comparisons and the embedding over every model's predictions."""
    from .survival.lab import summarise

    X, y = survival_inputs(table_path, survival)[:2]
    summarise(model_dirs, out_dir, {**survival, "seed": seed}, X=X, y=y)
