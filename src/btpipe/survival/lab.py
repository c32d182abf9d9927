"""Run the survival lab: fold, fit, predict out of fold, score, compare, save.

Files under ``out_dir`` (results/survival):
``folds.json``; ``{model}/predictions.parquet``, ``{model}/card.json``,
``{model}/fold_metrics.parquet``, ``{model}/final.pkl``; ``table.parquet``
(the prepared matrix, for the embedding); ``metrics.parquet``,
``comparisons.parquet``, ``embeddings.parquet``.
"""

from __future__ import annotations

import importlib
import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import ConfigError, InputError
from ..io import atomic_path, write_json, write_parquet
from . import metrics as M
from .data import default_feature_columns, make_y, prepare_table
from .folds import folds_and_holdout, write_folds
from .models import MODELS, build_model, model_options, selected_features, transform_until_model

DEFAULT_PARAMS = {
    "folds": 5,
    "repeats": 1,
    "top_n": 20,
    "models": ["cox", "rsf"],
    "horizons_days": [365, 730],
    "class_cutoffs_months": [10, 15],
    "tau": None,
    "n_permutations": 5000,
    "holdout_fraction": 0.0,
    "model_params": {},
}
METRIC_COLUMNS = ["model", "repeat", "fold", "metric", "horizon", "value"]
LIBRARIES = ("sksurv", "sklearn", "lifelines", "numpy", "pandas", "scipy", "torch")


def resolve_params(params: dict | None) -> dict:
    """The survival config section with defaults filled in."""
    out = dict(DEFAULT_PARAMS)
    out.update({k: v for k, v in (params or {}).items() if v is not None})
    unknown = [m for m in out["models"] if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown survival model(s) {unknown}; known: {sorted(MODELS)}")
    return out


def library_versions() -> dict:
    versions = {"btpipe": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # an optional library that is not installed
            versions[name] = None
    return versions


# ---------------------------------------------------------------- one fold


def _surv_columns(horizons):
    return [f"surv_{int(h) if float(h).is_integer() else h}d" for h in horizons]


def predict_outputs(pipe, name, X, horizons, grid=None) -> dict:
    """Risk, days (days models), survival at horizons and on ``grid`` for fitted ``pipe``."""
    spec = MODELS[name]
    out = {"risk": np.asarray(pipe.predict(X), dtype=float), "days": None,
           "surv_h": None, "surv_grid": None}
    Xt = transform_until_model(pipe, X)
    if spec.predicts_days:
        out["days"] = np.asarray(pipe[-1].predict_days(Xt), dtype=float)
    if spec.survival_function:
        fns = pipe[-1].predict_survival_function(Xt)
        out["surv_h"] = M.step_values(fns, horizons) if len(horizons) else None
        if grid is not None and len(grid):
            out["surv_grid"] = M.step_values(fns, grid)
    return out


def score_fold(name, y_train, y_test, train_out, test_out, params) -> list[tuple]:
    """(metric, horizon, value) rows for one fold's test part."""
    spec = MODELS[name]
    cutoffs = params["class_cutoffs_months"]
    ev, t = y_test["event"], y_test["time"]
    risk = test_out["risk"]
    rows = [("c_harrell", None, M.harrell_c(ev, t, risk)),
            ("c_uno", None, M.uno_c(y_train, y_test, risk, params.get("tau")))]
    if test_out["surv_grid"] is not None:
        grid = np.unique(t)
        rows.append(("c_td", None, M.antolini_c_from_matrix(ev, t, test_out["surv_grid"], grid)))
    else:  # no survival function: C^td reduces to Harrell's C of the risk
        rows.append(("c_td", None, rows[0][2]))
    for h, value in M.auc_td(y_train, y_test, risk, params["horizons_days"]).items():
        rows.append(("auc_td", h, value))
    if test_out.get("surv_ibs") is not None:
        rows.append(("ibs", None, M.integrated_brier(y_train, y_test, test_out["surv_ibs"],
                                                     test_out["ibs_grid"])))
    high = risk > np.median(train_out["risk"])
    hr, p = M.risk_group_tests(ev, t, high)
    rows += [("hr", None, hr), ("logrank_p", None, p)]
    if spec.predicts_days:
        predicted_class = M.days_to_class(test_out["days"], cutoffs)
        mse, rho = M.days_errors(t, ev, test_out["days"])
        rows += [("mse", None, mse), ("spearman", None, rho)]
    else:
        thresholds = M.risk_class_thresholds(train_out["risk"], y_train, cutoffs)
        predicted_class = M.risk_to_class(risk, thresholds, len(cutoffs) + 1)
    rows.append(("class_accuracy", None, M.class_accuracy(t, ev, predicted_class, cutoffs)))
    return rows


def run_fold(name, X, y, train, test, params, covariates, seed):
    """Fit on ``train`` positions, predict train and test; returns (pipe, train_out, test_out)."""
    pipe = build_model(name, params, covariates, seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        pipe.fit(X.iloc[train], y[train])
    horizons = params["horizons_days"]
    y_tr, y_te = y[train], y[test]
    ibs_grid = M.brier_grid(y_tr, y_te)
    test_grid = np.unique(np.concatenate([np.unique(y_te["time"]), ibs_grid]))
    train_out = predict_outputs(pipe, name, X.iloc[train], [], None)
    test_out = predict_outputs(pipe, name, X.iloc[test], horizons, test_grid)
    if test_out["surv_grid"] is not None:
        full = test_out["surv_grid"]
        test_out["surv_grid"] = full[:, np.searchsorted(test_grid, np.unique(y_te["time"]))]
        test_out["surv_ibs"] = full[:, np.searchsorted(test_grid, ibs_grid)]
        test_out["ibs_grid"] = ibs_grid
    return pipe, train_out, test_out


def metric_table(metric_rows) -> pd.DataFrame:
    """The long metric table (METRIC_COLUMNS) from (model, repeat, fold, metric, horizon, value) rows."""
    metrics = pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)
    metrics["horizon"] = metrics["horizon"].astype(float)
    return metrics


def fold_tables(pred_frames, metric_rows):
    """Out-of-fold predictions and the long per-fold metric table of one model."""
    return pd.concat(pred_frames, ignore_index=True), metric_table(metric_rows)


def fold_failed(name, fold, n_train, n_test, horizons, exc, fold_errors):
    """A fold whose fit failed: warn, record it for the card, NaN predictions."""
    warnings.warn(f"survival model {name} failed on repeat {fold['repeat']} fold {fold['fold']}: "
                  f"{exc}", RuntimeWarning)
    fold_errors.append({"repeat": fold["repeat"], "fold": fold["fold"], "error": str(exc)})
    return _nan_outputs(n_train, name, horizons), _nan_outputs(n_test, name, horizons)


def _nan_outputs(n, name, horizons):
    spec = MODELS[name]
    return {"risk": np.full(n, np.nan), "days": np.full(n, np.nan) if spec.predicts_days else None,
            "surv_h": np.full((n, len(horizons)), np.nan) if spec.survival_function else None,
            "surv_grid": None}


# ---------------------------------------------------------------- one model


def run_model(name, X, y, ids, folds, out_dir, params, seed=0, holdout_ids=()) -> pd.DataFrame:
    """Cross-validate one model and fit its final model on every development subject.

    Writes ``out_dir/{name}/predictions.parquet`` (subject, repeat, fold, risk,
    predicted_days, time, event, risk_group, surv_{h}d), ``fold_metrics.parquet``
    (long), ``card.json`` and ``final.pkl``. A fold whose fit fails (e.g. a
    tiny training part) gives NaN predictions and is listed in the card.
    ``holdout_ids`` (rows of X that no fold trains on) are scored by every fold
    model (see :func:`holdout_tables`) and left out of the final model.
    Returns the predictions.
    """
    import joblib

    params = resolve_params(params)
    ids = np.asarray([str(i) for i in ids])
    position = {s: i for i, s in enumerate(ids)}
    hold = np.asarray([position[str(s)] for s in holdout_ids], dtype=int)
    covariates = list(X.attrs.get("covariates", []))
    horizons = [float(h) for h in params["horizons_days"]]
    spec = MODELS[name]
    pred_frames, metric_rows, fold_errors, chosen, hold_percentiles = [], [], [], [], []
    for f in folds:
        train = np.asarray([position[s] for s in f["train_ids"]])
        test = np.asarray([position[s] for s in f["test_ids"]])
        try:
            pipe, train_out, test_out = run_fold(name, X, y, train, test, params, covariates, seed)
            chosen.append(selected_features(pipe))
            if len(hold):
                hold_risk = predict_outputs(pipe, name, X.iloc[hold], [], None)["risk"]
                hold_percentiles.append(risk_percentiles(hold_risk, train_out["risk"]))
            for metric, horizon, value in score_fold(name, y[train], y[test], train_out, test_out, params):
                metric_rows.append((name, f["repeat"], f["fold"], metric, horizon, value))
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            train_out, test_out = fold_failed(name, f, len(train), len(test), horizons, exc,
                                              fold_errors)
        pred_frames.append(_prediction_frame(name, f, ids[test], y[test], train_out, test_out, horizons))
    predictions, metrics = fold_tables(pred_frames, metric_rows)
    model_dir = Path(out_dir) / name
    if len(hold):
        write_holdout(model_dir, name, ids[hold], y[hold], hold_percentiles)
    dev = np.setdiff1d(np.arange(len(ids)), hold)
    final = build_model(name, params, covariates, seed).fit(X.iloc[dev], y[dev])
    bundle = {"name": name, "pipeline": final, "columns": list(X.columns),
              "horizons_days": horizons, "btpipe": __version__}
    with atomic_path(model_dir / "final.pkl") as tmp:
        joblib.dump(bundle, tmp)
    write_parquet(model_dir / "predictions.parquet", predictions)
    write_parquet(model_dir / "fold_metrics.parquet", metrics)
    card = _model_card(name, spec, X, y[dev], folds, params, seed, final, chosen, fold_errors)
    card["n_holdout"] = int(len(hold))
    write_json(model_dir / "card.json", card)
    return predictions


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


def _prediction_frame(name, fold, test_ids, y_test, train_out, test_out, horizons):
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
        for col, values in zip(_surv_columns(horizons), np.asarray(test_out["surv_h"]).T):
            frame[col] = values
    return frame


def _model_card(name, spec, X, y, folds, params, seed, final, chosen, fold_errors) -> dict:
    counts = pd.Series([c for fold in chosen for c in fold]).value_counts()
    return {
        "model": name,
        "description": spec.description,
        "hyperparameters": {**model_options(name, params), "top_n": params.get("top_n")},
        "features_available": list(X.columns),
        "covariates": list(X.attrs.get("covariates", [])),
        "features_used_final": selected_features(final),
        "feature_selection_frequency": {k: float(v) / max(1, len(chosen)) for k, v in counts.items()},
        "seed": int(seed),
        "n": int(len(y)),
        "n_events": int(np.sum(y["event"])),
        "folds": int(max(f["fold"] for f in folds) + 1),
        "repeats": int(max(f["repeat"] for f in folds) + 1),
        "fold_errors": fold_errors,
        "predicts_days": spec.predicts_days,
        "survival_function": spec.survival_function,
        "horizons_days": list(params["horizons_days"]),
        "class_cutoffs_months": list(params["class_cutoffs_months"]),
        "libraries": library_versions(),
    }


def predict_new(final_path, X: pd.DataFrame) -> pd.DataFrame:
    """Score new subjects with a saved final model (no retraining).

    X needs the training columns (extra ones are ignored); returns subject,
    risk, predicted_days (days models) and surv_{h}d at the saved horizons.
    """
    import joblib

    bundle = joblib.load(final_path)
    missing = [c for c in bundle["columns"] if c not in X.columns]
    if missing:
        raise InputError(f"new subjects lack the model's columns {missing[:5]}", path=final_path)
    Xn = X[bundle["columns"]].astype(float)
    out = predict_outputs(bundle["pipeline"], bundle["name"], Xn, bundle["horizons_days"])
    frame = pd.DataFrame({"subject": [str(i) for i in X.index], "risk": out["risk"]})
    if out["days"] is not None:
        frame["predicted_days"] = out["days"]
    if out["surv_h"] is not None:
        for col, values in zip(_surv_columns(bundle["horizons_days"]), out["surv_h"].T):
            frame[col] = values
    return frame


# ---------------------------------------------------------------- summaries


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


# ---------------------------------------------------------------- entry points


def _load_table(table) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    if not path.exists():
        raise InputError("survival table not found", path=path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    from ..samples import read_table

    return read_table(path)


def run_lab(table, time_col, event_col, covariates, feature_cols, params, out_dir, seed=0) -> dict:
    """prepare + folds + every model in params['models'] + summarise.

    Returns {"folds": path, "models": {name: dir}, "metrics": path,
    "comparisons": path, "embeddings": path, "summary": DataFrame}.
    """
    params = resolve_params(params)
    params.setdefault("seed", seed)
    out_dir = Path(out_dir)
    frame = _load_table(table)
    X, y, ids = prepare_table(frame, time_col, event_col, covariates, feature_cols)
    if X.shape[1] == 0:
        raise ConfigError("survival lab has no covariates or features to model")
    folds, holdout = folds_and_holdout(y, ids, params, seed)
    keep = ~np.isin(ids, holdout)
    write_folds(out_dir / "folds.json", folds, holdout,
                meta={"seed": seed, "n": int(keep.sum()), "n_events": int(y["event"][keep].sum())})
    write_prepared(out_dir / "table.parquet", X, y)
    model_dirs = {}
    for name in params["models"]:
        run_model(name, X, y, ids, folds, out_dir, params, seed, holdout_ids=holdout)
        model_dirs[name] = out_dir / name
    summarise(list(model_dirs.values()), out_dir, params, X=X, y=y)
    summary = metric_summary(pd.read_parquet(out_dir / "metrics.parquet"))
    return {"folds": out_dir / "folds.json", "models": model_dirs, "metrics": out_dir / "metrics.parquet",
            "comparisons": out_dir / "comparisons.parquet", "embeddings": out_dir / "embeddings.parquet",
            "summary": summary}


def _config_section(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return dict(data.get("survival", data))


def survival_cli(args) -> dict:
    """``btpipe survival``: args carries table, time, event, features, models, folds,
    repeats, seed, config, out (and optionally id, covariates)."""
    section = _config_section(args.config) if getattr(args, "config", None) else {}
    frame = _load_table(args.table)
    id_col = getattr(args, "id", None)
    if id_col:
        frame = frame.rename(columns={id_col: "subject"})
    elif "subject" not in frame.columns and frame.shape[1] and frame.iloc[:, 0].is_unique \
            and frame.columns[0] != args.time:
        frame = frame.rename(columns={frame.columns[0]: "subject"})
    covariates = _split(getattr(args, "covariates", None)) or list(section.get("covariates") or [])
    covariates = [c for c in covariates if c in frame.columns]
    features = _split(args.features) or default_feature_columns(frame, args.time, args.event, covariates)
    params = {k: v for k, v in section.items() if k in DEFAULT_PARAMS}
    for key in ("folds", "repeats"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    if getattr(args, "models", None):
        params["models"] = _split(args.models)
    result = run_lab(frame, args.time, args.event, covariates, features, params, args.out,
                     int(args.seed or 0))
    means = result["summary"]
    harrell = means[means["metric"] == "c_harrell"]
    for row in harrell.itertuples():
        print(f"{row.model}: Harrell C {row.mean:.3f} (sd {row.std:.3f}, {row.count} folds)")
    return result


def _split(text) -> list[str]:
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return list(text)
    return [t.strip() for t in str(text).split(",") if t.strip()]

