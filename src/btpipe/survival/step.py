"""The survival stage's workflow steps: files in, files out (called by workflow/scripts).

``survival``: the survival section of the config, or the part of it a step reads.
"""

from __future__ import annotations

import pandas as pd

from .. import io
from ..errors import InputError
from .cohort import CLINICAL_ROW, qc_flags_by_subject, split_cohort
from .compare import summarise
from .data import prepare_like, prepare_table
from .fit import Inputs, run_model
from .folds import folds_and_holdout, read_folds, write_folds
from .registry import ResolvedModel


def survival_columns(survival: dict) -> list[str]:
    """Clinical columns the survival stage reads: time, event (if any) and covariates."""
    return [survival["time"], *([survival["event"]] if survival.get("event") else []),
            *survival["covariates"]]


def feature_columns(table: pd.DataFrame, survival) -> list[str]:
    """Image-feature columns of a survival table: all but id, outcome, covariates and subset columns."""
    skip = {"subject", *survival_columns(survival), *(survival.get("subset") or {})}
    return [c for c in table.columns if c not in skip]


def table_step(samples, survival, ingest_path, features_path, qc_path, out_table, out_new,
               out_excluded) -> pd.DataFrame:
    """Clinical columns + image features for every subject that passed ingest, split into the
    development table (valid outcome, no excluding QC flag, inside the subset) and the subjects
    the final models only predict for, each listed in excluded.json with the reason.

    ``samples``: the samples sheet or BraTS discovery (:func:`btpipe.samples.load_samples`).
    """
    ingest = pd.read_parquet(ingest_path)
    passed = set(ingest.loc[ingest["status"] == "ok", "subject"])
    samples = samples.reset_index(drop=True)
    subset = survival.get("subset") or {}
    keep = ["subject", *survival_columns(survival),
            *(c for c in subset if c not in survival_columns(survival)),
            *([CLINICAL_ROW] if CLINICAL_ROW in samples.columns else [])]
    missing = [c for c in keep if c not in samples.columns]
    if missing:
        raise InputError(f"survival columns {missing} are not in the samples sheet or clinical table")
    table = samples.loc[samples["subject"].isin(passed), keep]
    if survival["features"] == "radiomics":
        table = table.merge(pd.read_parquet(features_path), on="subject", how="left")
    develop, new, excluded = split_cohort(
        table, survival["time"], survival.get("event"), qc_flags_by_subject(pd.read_parquet(qc_path)),
        survival["exclude_qc_flags"], subset)
    io.write_parquet(out_table, develop)
    io.write_parquet(out_new, new)
    io.write_json(out_excluded, {"excluded": excluded, "n_development": int(len(develop)),
                                 "flags_excluded": survival["exclude_qc_flags"], "subset": subset})
    return develop


def development_data(table_path, survival):
    """(X, y, ids) of the cross-validated subjects (:func:`btpipe.survival.data.prepare_table`)."""
    table = pd.read_parquet(table_path)
    return prepare_table(table, survival["time"], survival.get("event"),
                         covariates=list(survival["covariates"]),
                         feature_cols=feature_columns(table, survival))


def new_data(new_path, X_train, survival):
    """(X_new, ids) of the subjects without a usable outcome, encoded like X_train."""
    table = pd.read_parquet(new_path)
    return prepare_like(table, X_train, survival["covariates"], feature_columns(table, survival))


def folds_step(table_path, survival, seed, out_path) -> None:
    _, y, ids = development_data(table_path, survival)
    folds, holdout = folds_and_holdout(y, ids, survival, seed)
    write_folds(out_path, folds, holdout)


def subject_files(subjects, files) -> dict[str, list[str]]:
    """{subject: its files} from a flat file list in subject order, the same number each."""
    per = len(files) // max(1, len(subjects))
    if per * len(subjects) != len(files):
        raise InputError(f"{len(files)} image files for {len(subjects)} subjects")
    return {str(s): list(files[i * per:(i + 1) * per]) for i, s in enumerate(subjects)}


def load_subject_inputs(model: ResolvedModel, files: dict, subjects) -> list:
    """The slice bags or volumes of ``subjects`` at the model's size, in that order."""
    if model.kind == "bags":
        from .bags import load_bags

        bags = load_bags({s: f[0] for s, f in files.items()}, subjects, size=model.options["size"],
                         channels=model.options["channels"])
        return [bags[str(s)] for s in subjects]
    from .volumes import load_volumes

    volumes = load_volumes(files, subjects, model.options["size"], model.options["crop"])
    return [volumes[str(s)] for s in subjects]


def model_step(name, table_path, new_path, folds_path, survival, seed, out_dir, images=(),
               subjects=(), pretrain_cache=None) -> pd.DataFrame:
    """Cross-validate one model on the shared folds; its final model also predicts the
    subjects of ``new_path`` (no usable outcome). Slice-bag and 3-D models read ``images``
    (the rule's inputs: each subject's files in ``subjects`` order)."""
    model = ResolvedModel.from_params(name, survival, seed, pretrain_cache=pretrain_cache)
    X, y, ids = development_data(table_path, survival)
    folds, holdout = read_folds(folds_path)
    if model.kind == "features":
        X_new, new_ids = new_data(new_path, X, survival)
        inputs, new_inputs = Inputs(X), Inputs(X_new)
    else:
        new_ids = list(pd.read_parquet(new_path)["subject"].astype(str))
        files = subject_files(subjects, images)
        inputs = Inputs(load_subject_inputs(model, files, list(ids)), model.kind)
        new_inputs = Inputs(load_subject_inputs(model, files, new_ids), model.kind)
    return run_model(model, inputs, y, ids, folds, out_dir, holdout_ids=holdout,
                     new_ids=list(new_ids), new_inputs=new_inputs)


def summary_step(model_dirs, out_dir, table_path, survival, seed) -> None:
    """metrics, comparisons and the embedding over every model's predictions."""
    X, y, _ = development_data(table_path, survival)
    summarise(model_dirs, out_dir, {**survival, "seed": seed}, X=X, y=y)
