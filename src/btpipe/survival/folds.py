"""Repeated stratified k-fold splits for survival data.

Strata are event x time-quantile bins, so that every fold sees a similar
censoring ratio and spread of survival times. On small cohorts the number of
time bins shrinks until every stratum can fill every fold, then stratification
falls back to the event alone, then to none (plain shuffled k-fold).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from ..errors import ConfigError
from ..io import read_json, write_json


def stratification_labels(y, k: int, max_time_bins: int = 3):
    """Stratum label per subject (event x time-quantile bin), or None for no strata."""
    event = np.asarray(y["event"], dtype=bool)
    time = np.asarray(y["time"], dtype=float)
    for bins in range(max_time_bins, 0, -1):
        if bins > 1:
            edges = np.quantile(time, np.linspace(0, 1, bins + 1)[1:-1])
            time_bin = np.searchsorted(edges, time, side="right")
        else:
            time_bin = np.zeros(len(time), dtype=int)
        labels = event.astype(int) * bins + time_bin
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= k:
            return labels
    return None


def _splitter(labels, k, seed):
    if labels is None:
        return KFold(k, shuffle=True, random_state=seed), None
    return StratifiedKFold(k, shuffle=True, random_state=seed), labels


def make_folds(y, k: int, repeats: int = 1, seed: int = 0, ids=None) -> list[dict]:
    """Repeated stratified k-fold.

    Returns one dict per (repeat, fold): ``repeat``, ``fold``, ``train_ids``,
    ``test_ids`` (lists of subject ids; positions as strings when ``ids`` is
    None). Repeat r uses seed ``seed + r``. k larger than the cohort is cut to
    the cohort size (with a warning).
    """
    n = len(y)
    ids = np.asarray([str(i) for i in range(n)] if ids is None else [str(i) for i in ids])
    if int(k) < 2 or int(repeats) < 1:
        raise ConfigError(f"survival folds must be >= 2 and repeats >= 1 (got {k}, {repeats})")
    if n < 2:
        raise ConfigError(f"survival needs at least 2 subjects, got {n}")
    if k > n:
        warnings.warn(f"{k} folds for {n} subjects: using {n}", stacklevel=2)
        k = n
    labels = stratification_labels(y, k)
    folds = []
    for repeat in range(int(repeats)):
        splitter, strata = _splitter(labels, k, seed + repeat)
        split = splitter.split(np.zeros(n), strata)
        for fold, (train, test) in enumerate(split):
            folds.append({"repeat": repeat, "fold": fold,
                          "train_ids": ids[train].tolist(), "test_ids": ids[test].tolist()})
    return folds


def holdout_split(y, fraction: float, seed: int = 0, ids=None):
    """(development_ids, holdout_ids) with matched censoring ratio (stratified on event)."""
    n = len(y)
    ids = np.asarray([str(i) for i in range(n)] if ids is None else [str(i) for i in ids])
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {fraction}")
    event = np.asarray(y["event"], dtype=int)
    n_test = max(1, int(round(fraction * n)))
    strata = event if np.bincount(event, minlength=2).min() >= 2 and n_test >= 2 else None
    dev, test = train_test_split(ids, test_size=n_test, random_state=seed, stratify=strata)
    return sorted(dev.tolist()), sorted(test.tolist())


def folds_and_holdout(y, ids, params, seed: int = 0) -> tuple[list[dict], list[str]]:
    """The survival section's split: an optional held-out part
    (``holdout_fraction``), then repeated stratified k-fold on the rest."""
    ids = np.asarray([str(i) for i in ids])
    holdout = []
    if float(params.get("holdout_fraction") or 0) > 0:
        _, holdout = holdout_split(y, float(params["holdout_fraction"]), seed, ids)
    keep = ~np.isin(ids, holdout)
    folds = make_folds(y[keep], int(params["folds"]), int(params["repeats"]), seed, ids[keep])
    return folds, holdout


def read_folds(path) -> tuple[list[dict], list[str]]:
    """(folds, held-out ids) back from a folds.json written by :func:`write_folds`."""
    split = read_json(path)
    return split["folds"], list(split.get("holdout_ids", []))


def write_folds(path, folds, holdout_ids=None, meta=None) -> None:
    """Write survival/folds.json: {"folds": [...], "holdout_ids": [...], **meta}."""
    payload = {"folds": folds, "holdout_ids": list(holdout_ids or [])}
    payload.update(meta or {})
    write_json(path, payload)
