"""Turn a clinical/feature table into (X, y, ids) for the survival lab.

``y`` is a scikit-survival structured array with fields ``event`` (bool) and
``time`` (float days). Censoring can come from an event column or from the
time column's text (BraTS ``ALIVE (361 days later)`` = censored at 361).
Categorical covariates are one-hot encoded; the text ``NA`` is a category of
its own (BraTS extent of resection), not a missing value.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import InputError
from ..samples import parse_survival

MISSING_TOKENS = {"", "na", "nan", "none", "null", "n/a"}
EVENT_TRUE = {"1", "1.0", "true", "yes", "dead", "death", "deceased", "event"}
EVENT_FALSE = {"0", "0.0", "false", "no", "alive", "censored"}
SURVIVAL_DTYPE = [("event", bool), ("time", float)]


def make_y(event, time) -> np.ndarray:
    """Structured survival array from event (bool-like) and time (days)."""
    y = np.empty(len(time), dtype=SURVIVAL_DTYPE)
    y["event"] = np.asarray(event, dtype=bool)
    y["time"] = np.asarray(time, dtype=float)
    return y


def subject_ids(frame: pd.DataFrame) -> np.ndarray:
    """Subject ids: the ``subject`` column when present, otherwise the index."""
    ids = frame["subject"] if "subject" in frame.columns else frame.index.to_series()
    ids = ids.astype(str).to_numpy()
    dupes = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(dupes):
        raise InputError(f"duplicate subject ids in the survival table: {list(dupes)[:5]}")
    return ids


def is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def _as_numeric(column: pd.Series) -> pd.Series | None:
    """Column as floats when every non-missing cell is a number, else None."""
    values = [np.nan if is_missing(v) else v for v in column]
    numeric = pd.to_numeric(pd.Series(values, index=column.index), errors="coerce")
    present = [not is_missing(v) for v in column]
    if numeric[present].isna().any():
        return None
    return numeric.astype(float)


def _parse_event(value, subject):
    if is_missing(value):
        raise InputError("event is missing", subject=subject)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in EVENT_TRUE:
        return True
    if text in EVENT_FALSE:
        return False
    raise InputError(f"event {value!r} is not 0/1 (1 = death, 0 = censored)", subject=subject)


def parse_outcome(frame: pd.DataFrame, time_col: str, event_col=None, ids=None):
    """(event bool array, time float array) from the table.

    Without ``event_col`` an event is read from the time text (``ALIVE (N days
    later)`` = censored) and every other row is an event. With it, a time text
    that says ALIVE still wins (the text is explicit about censoring).
    """
    ids = subject_ids(frame) if ids is None else ids
    if time_col not in frame.columns:
        raise InputError(f"time column {time_col!r} not in the table (columns: {list(frame.columns)})")
    if event_col is not None and event_col not in frame.columns:
        raise InputError(f"event column {event_col!r} not in the table")
    times, events = [], []
    for pos, subject in enumerate(ids):
        days, text_event = parse_survival(frame[time_col].iloc[pos], subject=subject)
        if days is None:
            raise InputError(f"survival time ({time_col}) is missing", subject=subject)
        if text_event is not None:
            event = bool(text_event)
        elif event_col is not None:
            event = _parse_event(frame[event_col].iloc[pos], subject)
        else:
            event = True
        times.append(days)
        events.append(event)
    return np.asarray(events, dtype=bool), np.asarray(times, dtype=float)


def _categories(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "NA" if is_missing(v) else str(v).strip())


def categorical_levels(frame: pd.DataFrame, covariates) -> dict[str, list[str]]:
    """{column: levels, most frequent first} for the covariates that are not numeric.

    The first level is the reference (dropped), so that an unpenalised Cox
    model is identifiable; a missing cell is the category ``NA`` (as BraTS writes it).
    """
    levels = {}
    for col in covariates:
        if col not in frame.columns:
            raise InputError(f"covariate column {col!r} not in the table")
        if _as_numeric(frame[col]) is None:
            counts = _categories(frame[col]).value_counts().sort_index()
            levels[col] = list(counts.sort_values(ascending=False, kind="stable").index)
    return levels


def encode_covariates(frame: pd.DataFrame, covariates, levels=None) -> pd.DataFrame:
    """Numeric covariates as floats, categorical ones one-hot encoded.

    ``levels`` ({column: levels}, from :func:`categorical_levels` of the
    training table) encodes new subjects exactly as the training subjects were;
    a level the training table never had encodes as the reference level.
    """
    levels = categorical_levels(frame, covariates) if levels is None else levels
    parts = []
    for col in covariates:
        if col not in frame.columns:
            raise InputError(f"covariate column {col!r} not in the table")
        if col not in levels:
            values = [np.nan if is_missing(v) else v for v in frame[col]]
            parts.append(pd.to_numeric(pd.Series(values, index=frame.index), errors="coerce")
                         .astype(float).rename(col))
            continue
        cats = _categories(frame[col])
        for level in levels[col][1:]:
            parts.append((cats == level).astype(float).rename(f"{col}={level}"))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=frame.index)


def numeric_features(frame: pd.DataFrame, feature_cols, ids) -> pd.DataFrame:
    """Feature columns as floats; a non-numeric cell is an InputError naming the subject."""
    out = {}
    for col in feature_cols:
        if col not in frame.columns:
            raise InputError(f"feature column {col!r} not in the table")
        numeric = _as_numeric(frame[col])
        if numeric is None:
            bad = [i for i, v in zip(ids, frame[col]) if not is_missing(v)
                   and pd.isna(pd.to_numeric(pd.Series([v]), errors="coerce")[0])]
            raise InputError(f"feature {col!r} is not numeric ({frame[col].iloc[0]!r}...)",
                             subject=bad[0] if bad else None)
        out[col] = numeric
    return pd.DataFrame(out, index=frame.index)


def prepare_table(frame: pd.DataFrame, time_col: str, event_col=None, covariates=(),
                  feature_cols=()):
    """Table -> (X, y, ids).

    X: float DataFrame indexed by subject id, covariates (encoded) first, then
    features; ``X.attrs['covariates']`` lists the encoded covariate columns so
    that feature selection can always keep them. y: structured (event, time).
    ids: numpy array of subject ids in row order.
    """
    ids = subject_ids(frame)
    event, time = parse_outcome(frame, time_col, event_col, ids)
    covariates = [c for c in covariates if c]
    features = [c for c in feature_cols if c not in covariates]
    levels = categorical_levels(frame, covariates)
    cov = encode_covariates(frame, covariates, levels)
    feats = numeric_features(frame, features, ids)
    X = pd.concat([cov, feats], axis=1)
    X.index = pd.Index(ids, name="subject")
    X.attrs["covariates"] = list(cov.columns)
    X.attrs["levels"] = levels
    return X, make_y(event, time), ids


def prepare_like(frame: pd.DataFrame, X_train: pd.DataFrame, covariates=(), feature_cols=()):
    """New subjects' rows (no outcome needed) encoded as :func:`prepare_table` encoded
    ``X_train``: same columns in the same order, categorical levels of the training table;
    a column the new table lacks is missing (the model pipelines impute it)."""
    ids = subject_ids(frame)
    covariates = [c for c in covariates if c and c in frame.columns]
    features = [c for c in feature_cols if c not in covariates and c in frame.columns]
    cov = encode_covariates(frame, covariates, X_train.attrs.get("levels", {}))
    feats = numeric_features(frame, features, ids)
    X = pd.concat([cov, feats], axis=1).reindex(columns=X_train.columns)
    X.index = pd.Index(ids, name="subject")
    X.attrs["covariates"] = list(X_train.attrs.get("covariates", []))
    return X.astype(float), ids


def default_feature_columns(frame: pd.DataFrame, time_col, event_col=None, covariates=(),
                            exclude=("subject",)) -> list[str]:
    """Every numeric column that is not the id, time, event or a covariate."""
    skip = {time_col, event_col, *covariates, *exclude}
    return [c for c in frame.columns if c not in skip and _as_numeric(frame[c]) is not None]
