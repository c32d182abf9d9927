"""Cohort tables from the per-subject feature files and slice bags."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import InputError
from .slices import PLANES, load_slice_bag


def _is_indicator(column: str) -> bool:
    return column.endswith("_empty") and column.count("_") == 1


def merge_features(paths_by_subject: dict) -> pd.DataFrame:
    """One row per subject from per-subject Parquet files (``radiomics.parquet``).

    Columns are the union over subjects, in first-seen order, ``subject`` first. A region
    indicator ``{region}_empty`` missing from a subject's file is filled with 1 (no features
    for that region, like an empty region); every other missing column is NaN.
    """
    frames = []
    for subject, path in paths_by_subject.items():
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputError(f"cannot read feature table: {exc}", subject, path) from exc
        if len(frame) != 1:
            raise InputError(f"feature table must have one row, has {len(frame)}", subject, path)
        frame = frame.copy()
        frame["subject"] = subject
        frames.append(frame)
    if not frames:
        return pd.DataFrame({"subject": pd.Series([], dtype=str)})
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    columns = ["subject"] + [c for c in columns if c != "subject"]
    merged = pd.concat(frames, ignore_index=True, sort=False).reindex(columns=columns)
    for col in columns:
        if _is_indicator(col):
            merged[col] = merged[col].fillna(1).astype(np.int8)
    return merged


def slice_coverage_table(bag_paths_by_subject: dict) -> pd.DataFrame:
    """Long table: ``subject, plane`` (sagittal/coronal/axial/mean), ``K, n_slices, coverage,
    empty_tumour, bytes`` (size of the subject's bag file)."""
    rows = []
    for subject, path in bag_paths_by_subject.items():
        try:
            bag = load_slice_bag(path)
        except Exception as exc:
            raise InputError(f"cannot read slice bag: {exc}", subject, path) from exc
        common = {"subject": subject, "K": int(bag["K"]), "n_slices": int(bag["n_slices"]),
                  "empty_tumour": int(bag["empty_tumour"]), "bytes": int(os.path.getsize(path))}
        for plane, value in zip(PLANES, bag["coverage"]):
            rows.append({**common, "plane": plane, "coverage": float(value)})
        rows.append({**common, "plane": "mean", "coverage": float(bag["coverage_mean"])})
    columns = ["subject", "plane", "K", "n_slices", "coverage", "empty_tumour", "bytes"]
    return pd.DataFrame(rows, columns=columns)
