"""Comparing survival models and summarising a run: the cohort-level tables.

``metrics.parquet`` (every model's per-fold metrics), ``comparisons.parquet`` (every model
pair: difference of Harrell's C, paired permutation p) and ``embeddings.parquet`` (a 2-D PCA of
the feature matrix, coloured by survival class), written by :func:`summarise`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import write_parquet
from . import metrics as M
from .data import make_y
from .fit import METRIC_COLUMNS
from .registry import resolve_params


def permutation_test(event, time, risk_a, risk_b, groups, n_permutations=5000, seed=0,
                     batch=250) -> tuple[float, float]:
    """Paired permutation test of Harrell's C between two models' out-of-fold risks.

    Statistic: mean over (repeat, fold) groups of C_a - C_b. Each permutation
    swaps the two models' predictions for a random half of the patients
    (a patient is swapped in every repeat at once). Returns (difference,
    two-sided p with the +1 correction).
    """
    rng = np.random.default_rng(seed)
    subjects, inverse = np.unique(groups["subject"], return_inverse=True)
    pair_sets = []
    for _, idx in groups.groupby(["repeat", "fold"]).indices.items():
        i, j = M.comparable_pairs(event[idx], time[idx])
        if i.size:
            pair_sets.append((idx[i], idx[j]))
    if not pair_sets:
        return float("nan"), float("nan")

    def stat(ra, rb):  # ra, rb: [B, n_rows]
        diffs = []
        for i, j in pair_sets:
            ca = np.mean((ra[:, i] > ra[:, j]) + 0.5 * (ra[:, i] == ra[:, j]), axis=1)
            cb = np.mean((rb[:, i] > rb[:, j]) + 0.5 * (rb[:, i] == rb[:, j]), axis=1)
            diffs.append(ca - cb)
        return np.mean(diffs, axis=0)

    observed = float(stat(risk_a[None], risk_b[None])[0])
    extreme, done = 0, 0
    while done < n_permutations:
        b = min(batch, n_permutations - done)
        swap = rng.random((b, len(subjects))) < 0.5
        swap_rows = swap[:, inverse]
        ra = np.where(swap_rows, risk_b[None], risk_a[None])
        rb = np.where(swap_rows, risk_a[None], risk_b[None])
        extreme += int(np.sum(np.abs(stat(ra, rb)) >= abs(observed) - 1e-12))
        done += b
    return observed, (extreme + 1) / (n_permutations + 1)


def compare_models(predictions: dict, n_permutations=5000, seed=0) -> pd.DataFrame:
    """comparisons table: every model pair, Harrell C difference and permutation p."""
    rows = []
    keys = ["subject", "repeat", "fold"]
    for a, b in itertools.combinations(sorted(predictions), 2):
        merged = predictions[a][keys + ["time", "event", "risk"]].merge(
            predictions[b][keys + ["risk"]], on=keys, suffixes=("_a", "_b"))
        ok = np.isfinite(merged["risk_a"]) & np.isfinite(merged["risk_b"])
        merged = merged[ok].reset_index(drop=True)
        if merged.empty:
            diff, p = float("nan"), float("nan")
        else:
            diff, p = permutation_test(merged["event"].to_numpy(bool), merged["time"].to_numpy(float),
                                       merged["risk_a"].to_numpy(float), merged["risk_b"].to_numpy(float),
                                       merged[keys], n_permutations, seed)
        rows.append({"model_a": a, "model_b": b, "metric": "c_harrell", "difference": diff, "p_value": p})
    return pd.DataFrame(rows, columns=["model_a", "model_b", "metric", "difference", "p_value"])


def survival_class_labels(y, cutoffs_months=(10, 15)) -> list[str]:
    """short/mid/long from days, or 'censored' when a censored time does not fix the class."""
    names = ["short", "mid", "long"] if len(cutoffs_months) == 2 else \
        [f"class{i}" for i in range(len(cutoffs_months) + 1)]
    classes = M.days_to_class(y["time"], cutoffs_months)
    top = len(cutoffs_months)
    return [names[c] if (e or c == top) else "censored" for c, e in zip(classes, y["event"])]


def embeddings(X: pd.DataFrame, y, cutoffs_months=(10, 15)) -> pd.DataFrame:
    """2D PCA of the median-imputed, standardised feature matrix per subject."""
    from sklearn.decomposition import PCA

    values = X.to_numpy(dtype=float)
    medians = np.nanmedian(np.where(np.isfinite(values), values, np.nan), axis=0)
    values = np.where(np.isnan(values), np.nan_to_num(medians)[None, :], values)
    std = values.std(axis=0)
    z = (values - values.mean(axis=0)) / np.where(std > 0, std, 1.0)
    coords = np.zeros((len(X), 2))
    k = min(2, z.shape[1], max(0, len(X) - 1))
    if k > 0:
        coords[:, :k] = PCA(n_components=k).fit_transform(z)
    return pd.DataFrame({"subject": [str(i) for i in X.index], "pc1": coords[:, 0], "pc2": coords[:, 1],
                         "time": y["time"], "event": y["event"].astype(bool),
                         "survival_class": survival_class_labels(y, cutoffs_months)})


def write_prepared(path, X, y) -> None:
    """The prepared matrix with time and event (read back by ``summarise``)."""
    frame = X.copy()
    frame.insert(0, "__event", y["event"])
    frame.insert(0, "__time", y["time"])
    frame.insert(0, "subject", [str(i) for i in X.index])
    write_parquet(path, frame)


def read_prepared(path):
    frame = pd.read_parquet(path)
    y = make_y(frame.pop("__event"), frame.pop("__time"))
    X = frame.set_index("subject")
    return X, y


def summarise(model_dirs, out_dir, params, X=None, y=None) -> None:
    """Write metrics.parquet, comparisons.parquet and embeddings.parquet into ``out_dir``.

    ``model_dirs``: folders written by ``run_model``. The embedding uses X, y
    when given, else ``out_dir/table.parquet`` (written by ``run_lab``).
    """
    params = resolve_params(params)
    out_dir = Path(out_dir)
    metrics, predictions = [], {}
    for model_dir in map(Path, model_dirs):
        metrics.append(pd.read_parquet(model_dir / "fold_metrics.parquet"))
        predictions[model_dir.name] = pd.read_parquet(model_dir / "predictions.parquet")
    table = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=METRIC_COLUMNS)
    write_parquet(out_dir / "metrics.parquet", table[METRIC_COLUMNS])
    holdout = [pd.read_parquet(d / "holdout_metrics.parquet") for d in map(Path, model_dirs)
               if (d / "holdout_metrics.parquet").exists()]
    if holdout:  # only with survival.holdout_fraction > 0
        write_parquet(out_dir / "holdout_metrics.parquet", pd.concat(holdout, ignore_index=True))
    write_parquet(out_dir / "comparisons.parquet",
                  compare_models(predictions, int(params["n_permutations"]), int(params.get("seed", 0))))
    if X is None and (out_dir / "table.parquet").exists():
        X, y = read_prepared(out_dir / "table.parquet")
    if X is None:
        raise InputError("no feature matrix for the embedding", path=out_dir / "table.parquet")
    write_parquet(out_dir / "embeddings.parquet", embeddings(X, y, params["class_cutoffs_months"]))


def metric_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds per model, metric and horizon (for reports and docs)."""
    grouped = metrics.groupby(["model", "metric", "horizon"], dropna=False)["value"]
    return grouped.agg(["mean", "std", "count"]).reset_index()
