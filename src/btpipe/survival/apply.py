"""Saved final survival models: writing them, reading them back, predicting new subjects.

A feature-table model is saved with joblib as ``final.pkl`` ({name, pipeline, columns,
horizons_days, btpipe, train_median_risk}); a slice-bag or 3-D model as ``final.pt`` (tensors,
numbers and strings only: {name, input, model: the estimator's bundle, horizons_days, btpipe,
train_median_risk}). :func:`predict_new` scores new subjects with either, without retraining.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..io import atomic_path, torch_save
from . import metrics as M
from .pipelines import transform_until_model
from .registry import ResolvedModel


def surv_columns(horizons) -> list[str]:
    """Column names of the predicted survival at each horizon: surv_365d, ..."""
    return [f"surv_{int(h) if float(h).is_integer() else h}d" for h in horizons]


def predict_outputs(model, estimator, rows, horizons, grid=None) -> dict:
    """Risk, days (a days model's prediction, else the median of the predicted survival
    function), survival at ``horizons`` and on ``grid`` of a fitted estimator of ``model``
    (a ResolvedModel); ``rows``: feature-table rows or a list of per-subject inputs."""
    out = {"risk": np.asarray(estimator.predict(rows), dtype=float), "days": None,
           "surv_h": None, "surv_grid": None}
    final, features = (estimator[-1], transform_until_model(estimator, rows)) \
        if model.kind == "features" else (estimator, rows)
    if model.spec.predicts_days:
        out["days"] = np.asarray(final.predict_days(features), dtype=float)
    if model.spec.survival_function and (len(horizons) or (grid is not None and len(grid))):
        fns = final.predict_survival_function(features)
        out["days"] = M.median_survival_days(fns)
        out["surv_h"] = M.step_values(fns, horizons) if len(horizons) else None
        if grid is not None and len(grid):
            out["surv_grid"] = M.step_values(fns, grid)
    return out


def new_prediction_frame(subjects, out, horizons, train_median_risk=None) -> pd.DataFrame:
    """predictions_new rows: subject, risk, predicted_days, risk_group (against the final
    model's training median, when known) and survival at the horizons."""
    risk = np.asarray(out["risk"], float)
    frame = pd.DataFrame({"subject": list(subjects), "risk": risk,
                          "predicted_days": out["days"] if out["days"] is not None else np.nan})
    frame["risk_group"] = None if train_median_risk is None else \
        np.where(risk > train_median_risk, "high", "low")
    if out["surv_h"] is not None:
        for col, values in zip(surv_columns(horizons), np.asarray(out["surv_h"]).T):
            frame[col] = values
    return frame


def save_final(model_dir, model, final, columns, train_median_risk) -> Path:
    """Write the fitted final model of ``model`` (a ResolvedModel) into ``model_dir``."""
    horizons = [float(h) for h in model.horizons]
    if model.kind == "features":
        import joblib

        path = Path(model_dir) / "final.pkl"
        with atomic_path(path) as tmp:
            joblib.dump({"name": model.name, "pipeline": final, "columns": list(columns),
                         "horizons_days": horizons, "btpipe": __version__,
                         "train_median_risk": train_median_risk}, tmp)
        return path
    path = Path(model_dir) / "final.pt"
    torch_save(path, {"name": model.name, "input": model.kind, "model": final.bundle(),
                      "horizons_days": horizons, "btpipe": __version__,
                      "train_median_risk": train_median_risk})
    return path


def load_final(path, device="cpu"):
    """(fitted estimator, bundle) of a saved final model (final.pkl or final.pt)."""
    path = Path(path)
    if not path.exists():
        raise InputError("saved survival model not found", path=path)
    if path.suffix == ".pkl":
        import joblib

        bundle = joblib.load(path)
        return bundle["pipeline"], bundle
    import torch

    bundle = torch.load(path, map_location="cpu", weights_only=True)
    if bundle["model"]["class"] == "BagSurvivalModel":
        from .mil import BagSurvivalModel

        return BagSurvivalModel.from_bundle(bundle["model"], device), bundle
    from .volumes import VolumeSurvivalModel

    return VolumeSurvivalModel.from_bundle(bundle["model"], device), bundle


def predict_new(final_path, inputs) -> pd.DataFrame:
    """Score new subjects with a saved final model (no retraining).

    ``inputs``: for a feature-table model a DataFrame indexed by subject holding the model's
    columns (extra ones are ignored); for a slice-bag or 3-D model {subject: bag or volume}.
    Returns subject, risk, predicted_days, risk_group and surv_{h}d at the saved horizons.
    """
    estimator, bundle = load_final(final_path)
    model = ResolvedModel.from_params(bundle["name"], {"horizons_days": bundle["horizons_days"]})
    if isinstance(inputs, pd.DataFrame):
        missing = [c for c in bundle["columns"] if c not in inputs.columns]
        if missing:
            raise InputError(f"new subjects lack the model's columns {missing[:5]}", path=final_path)
        subjects, rows = [str(i) for i in inputs.index], inputs[bundle["columns"]].astype(float)
    else:
        subjects, rows = list(inputs), list(inputs.values())
    median = bundle.get("train_median_risk")
    if not subjects:
        return new_prediction_frame([], {"risk": [], "days": None, "surv_h": None},
                                    bundle["horizons_days"], median)
    out = predict_outputs(model, estimator, rows, bundle["horizons_days"])
    return new_prediction_frame(subjects, out, bundle["horizons_days"], median)
