"""Cross-validate one survival model and fit its final model: one runner for every kind.

A model reads rows of the feature table (a scikit-learn Pipeline) or per-subject images
(slice bags, volumes); :class:`Inputs` hides the difference. For each fold the model is fitted
on the training part and predicts the test part (out of fold), the optional held-out subjects
and nothing else; the final model is fitted on every development subject and predicts the
subjects without a usable outcome. Files under ``out_dir/{model}``: ``predictions.parquet``,
``fold_metrics.parquet``, ``card.json``, the final model (``final.pkl`` or ``final.pt``,
:mod:`btpipe.survival.apply`), ``predictions_new.parquet`` when new subjects are given,
``holdout_*.parquet`` with held-out subjects and ``attention.parquet`` for attention models.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..io import plain_values, write_json, write_parquet
from . import metrics as M
from .apply import new_prediction_frame, predict_outputs, save_final, surv_columns
from .pipelines import selected_features
from .registry import ResolvedModel

METRIC_COLUMNS = ["model", "repeat", "fold", "metric", "horizon", "value"]
ATTENTION_COLUMNS = ["subject", "repeat", "fold", "query", "plane", "slice_index", "relative_position",
                     "is_anchor", "weight"]
LIBRARIES = ("sksurv", "sklearn", "lifelines", "numpy", "pandas", "scipy", "torch")
# A fold whose fit fails on these is recorded (NaN predictions) and the run goes on.
FOLD_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError)


@dataclass
class Inputs:
    """What a model reads, one entry per subject in ``ids`` order: a feature table (kind
    'features', a DataFrame with ``attrs['covariates']``) or a list of per-subject inputs."""

    data: object
    kind: str = "features"

    def rows(self, positions):
        positions = np.asarray(positions, dtype=int)
        if self.kind == "features":
            return self.data.iloc[positions]
        return [self.data[i] for i in positions]

    @property
    def covariates(self) -> list:
        return list(self.data.attrs.get("covariates", [])) if self.kind == "features" else []

    @property
    def columns(self) -> list:
        return list(self.data.columns) if self.kind == "features" else []


def library_versions() -> dict:
    versions = {"btpipe": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # an optional library that is not installed
            versions[name] = None
    return versions


# ---------------------------------------------------------------- one fold


def fit_fold(model: ResolvedModel, inputs: Inputs, y, train, test):
    """Fit on ``train`` positions, predict train and test; returns (estimator, train_out, test_out)."""
    estimator = model.build(inputs.covariates)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        estimator.fit(inputs.rows(train), y[train])
    y_tr, y_te = y[train], y[test]
    ibs_grid = M.brier_grid(y_tr, y_te)
    test_grid = np.unique(np.concatenate([np.unique(y_te["time"]), ibs_grid]))
    train_out = predict_outputs(model, estimator, inputs.rows(train), [], None)
    test_out = predict_outputs(model, estimator, inputs.rows(test), model.horizons, test_grid)
    if test_out["surv_grid"] is not None:
        full = test_out["surv_grid"]
        test_out["surv_grid"] = full[:, np.searchsorted(test_grid, np.unique(y_te["time"]))]
        test_out["surv_ibs"] = full[:, np.searchsorted(test_grid, ibs_grid)]
        test_out["ibs_grid"] = ibs_grid
    return estimator, train_out, test_out


def score_fold(model: ResolvedModel, y_train, y_test, train_out, test_out) -> list[tuple]:
    """(metric, horizon, value) rows for one fold's test part."""
    cutoffs = list(model.cutoffs_months)
    ev, t = y_test["event"], y_test["time"]
    risk = test_out["risk"]
    rows = [("c_harrell", None, M.harrell_c(ev, t, risk)),
            ("c_uno", None, M.uno_c(y_train, y_test, risk, model.tau))]
    if test_out["surv_grid"] is not None:
        grid = np.unique(t)
        rows.append(("c_td", None, M.antolini_c_from_matrix(ev, t, test_out["surv_grid"], grid)))
    else:  # no survival function: C^td reduces to Harrell's C of the risk
        rows.append(("c_td", None, rows[0][2]))
    for h, value in M.auc_td(y_train, y_test, risk, list(model.horizons)).items():
        rows.append(("auc_td", h, value))
    if test_out.get("surv_ibs") is not None:
        rows.append(("ibs", None, M.integrated_brier(y_train, y_test, test_out["surv_ibs"],
                                                     test_out["ibs_grid"])))
    high = risk > np.median(train_out["risk"])
    hr, p = M.risk_group_tests(ev, t, high)
    rows += [("hr", None, hr), ("logrank_p", None, p)]
    if model.spec.predicts_days:
        predicted_class = M.days_to_class(test_out["days"], cutoffs)
        mse, rho = M.days_errors(t, ev, test_out["days"])
        rows += [("mse", None, mse), ("spearman", None, rho)]
    else:
        thresholds = M.risk_class_thresholds(train_out["risk"], y_train, cutoffs)
        predicted_class = M.risk_to_class(risk, thresholds, len(cutoffs) + 1)
    rows.append(("class_accuracy", None, M.class_accuracy(t, ev, predicted_class, cutoffs)))
    return rows


def nan_outputs(model: ResolvedModel, n) -> dict:
    return {"risk": np.full(n, np.nan), "days": np.full(n, np.nan),
            "surv_h": np.full((n, len(model.horizons)), np.nan) if model.spec.survival_function
            else None, "surv_grid": None}


def metric_table(metric_rows) -> pd.DataFrame:
    """The long metric table (METRIC_COLUMNS) from (model, repeat, fold, metric, horizon, value) rows."""
    metrics = pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)
    metrics["horizon"] = metrics["horizon"].astype(float)
    return metrics


def prediction_frame(fold, test_ids, y_test, train_out, test_out, horizons) -> pd.DataFrame:
    """Out-of-fold rows of one fold: subject, repeat, fold, risk, predicted_days, time, event,
    risk_group (split at the training part's median risk), surv_{h}d."""
    risk = test_out["risk"]
    median = np.median(train_out["risk"]) if np.isfinite(train_out["risk"]).all() else np.nan
    frame = pd.DataFrame({
        "subject": test_ids, "repeat": fold["repeat"], "fold": fold["fold"], "risk": risk,
        "predicted_days": test_out["days"] if test_out["days"] is not None else np.nan,
        "time": y_test["time"], "event": y_test["event"].astype(bool),
        "risk_group": np.where(np.isnan(risk) | np.isnan(median), None,
                               np.where(risk > median, "high", "low")),
    })
    if test_out["surv_h"] is not None:
        for col, values in zip(surv_columns(horizons), np.asarray(test_out["surv_h"]).T):
            frame[col] = values
    return frame


# ---------------------------------------------------------------- held-out subjects


def risk_percentiles(risk, train_risk) -> np.ndarray:
    """Where each risk falls among one fold model's training risks (0..1, ties
    count half): scale-free, so fold models can be averaged, and > 0.5 exactly
    when the risk is above that fold's training median."""
    risk, train_risk = np.asarray(risk, float), np.asarray(train_risk, float)
    below = (train_risk[None, :] < risk[:, None]).mean(axis=1)
    ties = (train_risk[None, :] == risk[:, None]).mean(axis=1)
    return below + ties / 2


def holdout_tables(name, hold_ids, y_hold, percentiles):
    """Held-out subjects scored by the fold models (none of which saw them).

    Each fold votes "high" when the subject's risk is above that fold's
    training median; the risk group is the majority vote (a tie goes to the
    side of the mean percentile). The ensemble risk is the mean percentile.
    Returns (predictions, long metrics with repeat -1 and fold -1).
    """
    pct = np.vstack(percentiles)  # folds x subjects
    votes_high = (pct > 0.5).sum(axis=0)
    risk = pct.mean(axis=0)
    high = np.where(2 * votes_high == len(pct), risk > 0.5, 2 * votes_high > len(pct))
    predictions = pd.DataFrame({"subject": hold_ids, "risk": risk, "votes_high": votes_high,
                                "n_folds": len(pct), "risk_group": np.where(high, "high", "low"),
                                "time": y_hold["time"], "event": y_hold["event"].astype(bool)})
    hr, p = M.risk_group_tests(y_hold["event"], y_hold["time"], high)
    rows = [(name, -1, -1, "c_harrell", None, M.harrell_c(y_hold["event"], y_hold["time"], risk)),
            (name, -1, -1, "hr", None, hr), (name, -1, -1, "logrank_p", None, p),
            (name, -1, -1, "n", None, float(len(hold_ids)))]
    return predictions, metric_table(rows)


def write_holdout(model_dir, name, hold_ids, y_hold, percentiles) -> None:
    """holdout_predictions.parquet and holdout_metrics.parquet (:func:`holdout_tables`)."""
    predictions, metrics = holdout_tables(name, hold_ids, y_hold, percentiles)
    write_parquet(Path(model_dir) / "holdout_predictions.parquet", predictions)
    write_parquet(Path(model_dir) / "holdout_metrics.parquet", metrics)


# ---------------------------------------------------------------- one model


def fold_record(model: ResolvedModel, estimator) -> dict:
    """What the card keeps of one fitted fold: the features a table model selected, or a
    subject model's training record."""
    if model.kind == "features":
        return {"features": selected_features(estimator)}
    return dict(estimator.fit_info_)


def fold_attention(estimator, rows, fold) -> pd.DataFrame | None:
    """Test-fold attention weights of an attention model, with the fold's repeat and number."""
    if not hasattr(estimator, "attention"):
        return None
    att = estimator.attention(rows)
    if not len(att):
        return None
    att.insert(1, "repeat", fold["repeat"])
    att.insert(2, "fold", fold["fold"])
    return att


def run_model(model: ResolvedModel, inputs: Inputs, y, ids, folds, out_dir, holdout_ids=(),
              new_ids=(), new_inputs: Inputs | None = None) -> pd.DataFrame:
    """Cross-validate ``model`` on ``folds`` and fit its final model on every development subject.

    ``holdout_ids`` (subjects that no fold trains on) are scored by every fold model and left
    out of the final model; ``new_inputs`` (subjects ``new_ids``, without a usable outcome) are
    predicted by the final model. A fold whose fit fails (e.g. a tiny training part) gives NaN
    predictions and is listed in the card. Returns the out-of-fold predictions.
    """
    ids = np.asarray([str(i) for i in ids])
    position = {s: i for i, s in enumerate(ids)}
    hold = np.asarray([position[str(s)] for s in holdout_ids], dtype=int)
    pred_frames, metric_rows, fold_errors, records, attention, hold_percentiles = [], [], [], [], [], []
    for f in folds:
        train = np.asarray([position[s] for s in f["train_ids"]])
        test = np.asarray([position[s] for s in f["test_ids"]])
        try:
            estimator, train_out, test_out = fit_fold(model, inputs, y, train, test)
            records.append({"repeat": f["repeat"], "fold": f["fold"], **fold_record(model, estimator)})
            if len(hold):
                hold_risk = predict_outputs(model, estimator, inputs.rows(hold), [], None)["risk"]
                hold_percentiles.append(risk_percentiles(hold_risk, train_out["risk"]))
            for metric, horizon, value in score_fold(model, y[train], y[test], train_out, test_out):
                metric_rows.append((model.name, f["repeat"], f["fold"], metric, horizon, value))
            attention.append(fold_attention(estimator, inputs.rows(test), f))
        except FOLD_ERRORS as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise  # a configuration problem (a GPU too small), not a fold problem
            warnings.warn(f"survival model {model.name} failed on repeat {f['repeat']} fold "
                          f"{f['fold']}: {exc}", RuntimeWarning)
            fold_errors.append({"repeat": f["repeat"], "fold": f["fold"], "error": str(exc)})
            train_out, test_out = nan_outputs(model, len(train)), nan_outputs(model, len(test))
        pred_frames.append(prediction_frame(f, ids[test], y[test], train_out, test_out, model.horizons))
    predictions = pd.concat(pred_frames, ignore_index=True)
    model_dir = Path(out_dir) / model.name
    if len(hold_percentiles):
        write_holdout(model_dir, model.name, ids[hold], y[hold], hold_percentiles)
    dev = np.setdiff1d(np.arange(len(ids)), hold)
    final = model.build(inputs.covariates)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        final.fit(inputs.rows(dev), y[dev])
    train_median = float(np.median(final.predict(inputs.rows(dev))))
    save_final(model_dir, model, final, inputs.columns, train_median)
    if new_inputs is not None:
        write_parquet(model_dir / "predictions_new.parquet",
                      predict_new_subjects(model, final, new_inputs, new_ids, train_median))
    if getattr(final, "has_attention", False):
        frames = [a for a in attention if a is not None]
        write_parquet(model_dir / "attention.parquet", pd.concat(frames, ignore_index=True) if frames
                      else pd.DataFrame(columns=ATTENTION_COLUMNS))
    write_parquet(model_dir / "predictions.parquet", predictions)
    write_parquet(model_dir / "fold_metrics.parquet", metric_table(metric_rows))
    write_json(model_dir / "card.json", model_card(model, inputs, y[dev], folds, final, records,
                                                   fold_errors, len(hold)))
    return predictions


def predict_new_subjects(model: ResolvedModel, final, new_inputs: Inputs, new_ids,
                         train_median) -> pd.DataFrame:
    """predictions_new rows of the subjects the final model only predicts for."""
    if not len(new_ids):
        empty = {"risk": np.empty(0), "days": np.empty(0), "surv_h": None}
        return new_prediction_frame([], empty, model.horizons, train_median)
    out = predict_outputs(model, final, new_inputs.rows(np.arange(len(new_ids))), model.horizons)
    return new_prediction_frame([str(s) for s in new_ids], out, model.horizons, train_median)


def model_card(model: ResolvedModel, inputs: Inputs, y_dev, folds, final, records, fold_errors,
               n_holdout) -> dict:
    """card.json: the model, its settings, the data it saw and how each fold went."""
    card = {
        "model": model.name,
        "description": model.spec.description,
        "seed": int(model.seed),
        "n": int(len(y_dev)),
        "n_holdout": int(n_holdout),
        "n_events": int(np.sum(y_dev["event"])),
        "folds": int(max(f["fold"] for f in folds) + 1),
        "repeats": int(max(f["repeat"] for f in folds) + 1),
        "fold_errors": fold_errors,
        "predicts_days": model.spec.predicts_days,
        "survival_function": model.spec.survival_function,
        "horizons_days": [int(h) if float(h).is_integer() else h for h in model.horizons],
        "class_cutoffs_months": list(model.cutoffs_months),
        "libraries": library_versions(),
    }
    if model.kind == "features":
        chosen = [r["features"] for r in records]
        counts = pd.Series([c for fold in chosen for c in fold]).value_counts()
        card.update({
            "hyperparameters": {**model.options, "top_n": model.top_n},
            "features_available": inputs.columns,
            "covariates": inputs.covariates,
            "features_used_final": selected_features(final),
            "feature_selection_frequency": {k: float(v) / max(1, len(chosen))
                                            for k, v in counts.items()},
        })
    else:
        card.update({
            "input": model.kind,
            "hyperparameters": plain_values(model.options),
            "fold_training": plain_values(records),
            "final_training": plain_values(final.fit_info_),
        })
    return card
