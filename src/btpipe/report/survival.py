"""The report's survival section: metrics per model, comparisons, Kaplan-Meier curves,
calibration, attention, and why a model sits at chance (statistics from btpipe.survival.metrics)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from ..survival.metrics import mean_ci
from . import figures as F
from .blocks import Table, figure, fmt, heading, missing, table, text
from .inputs import L, Inputs, excluded_subjects, first_repeat


# Metric direction for highlighting the best model (True: higher is better).
HIGHER_IS_BETTER = {"c_harrell": True, "c_uno": True, "c_td": True, "auc_td": True,
                    "ibs": False, "class_accuracy": True, "mse": False, "spearman": True,
                    "logrank_p": False, "hr": True}


METRIC_ORDER = ["c_harrell", "c_uno", "c_td", "auc_td", "ibs", "hr", "logrank_p",
                "class_accuracy", "mse", "spearman"]


def metric_label(metric, horizon) -> str:
    if horizon is None or (isinstance(horizon, float) and math.isnan(horizon)):
        return str(metric)
    return f"{metric} @ {float(horizon):g} d"


def _surv_horizon(column: str) -> float | None:
    """'surv_365d' / 'surv_365' -> 365.0; anything else -> None."""
    match = re.fullmatch(r"surv_(\d+(?:\.\d+)?)d?", column)
    return float(match.group(1)) if match else None


def harrell_by_model(metrics: pd.DataFrame | None) -> dict[str, tuple]:
    """{model: mean_ci of the out-of-fold Harrell C}."""
    if metrics is None or not {"model", "metric", "value"} <= set(metrics.columns):
        return {}
    part = metrics[metrics["metric"] == "c_harrell"]
    return {str(m): mean_ci(g["value"]) for m, g in part.groupby("model", sort=True)}


def _constant_risk(pred: pd.DataFrame | None) -> bool:
    """True when every test fold gave all its subjects one and the same risk."""
    if pred is None or "risk" not in pred or not len(pred):
        return False
    pred = first_repeat(pred)
    keys = [k for k in ("repeat", "fold") if k in pred]
    groups = pred.groupby(keys)["risk"] if keys else [(None, pred["risk"])]
    return all(g.round(12).nunique() <= 1 for _, g in groups)


def chance_explanation(inp: Inputs, model: str, stats: tuple) -> str | None:
    """Why a model's out-of-fold Harrell C is at or below 0.5, from what it
    predicted and its card; None when it is above chance."""
    mean, lo, hi, n_folds = stats
    if not n_folds or not math.isfinite(mean) or mean > 0.5:
        return None
    card = inp.json(L.survival(model, "card.json")) or {}
    n, events = card.get("n"), card.get("n_events")
    folds = card.get("folds") or n_folds
    size = (f"{n} subjects ({events} deaths), about {n / folds:.0f} per test fold and "
            f"{n - n / folds:.0f} to train on" if n else f"{n_folds} folds")
    if _constant_risk(inp.parquet(L.survival(model, "predictions.parquet"))):
        leaf = (card.get("hyperparameters") or {}).get("min_samples_leaf")
        why = (f" A tree may not split into leaves of fewer than {leaf} subjects "
               "(min_samples_leaf), which with this few training subjects leaves each tree "
               "a single leaf." if leaf else "")
        return (f"{model}: C {mean:.3f} because it gave every test subject the same risk, "
                f"and a constant risk ranks no pair of subjects (C is 0.5 by definition).{why} "
                f"Cohort: {size}.")
    chance = (f" The 95% interval [{lo:.3f}, {hi:.3f}] includes 0.5: with {size}, a score "
              "this far from 0.5 arises by chance alone." if math.isfinite(lo) and lo <= 0.5 <= hi
              else f" Cohort: {size}.")
    used = card.get("features_used_final")
    fitted = (f" It uses {len(used)} features (chosen again inside each training fold); "
              "with few events such a fit follows noise of the training fold that does not "
              "carry to unseen subjects." if used and len(used) > 1 else "")
    return (f"{model}: C {mean:.3f}, no better than chance out of fold (a C under 0.5 ranks "
            f"subjects against their survival).{chance}{fitted}")


def _metrics_table(metrics: pd.DataFrame) -> dict:
    """metric x model table of 'mean [95% CI]' over folds, best model in bold."""
    m = metrics.copy()
    if "horizon" not in m:
        m["horizon"] = np.nan
    m["label"] = [metric_label(a, h) for a, h in zip(m["metric"], m["horizon"])]
    models = sorted(m["model"].astype(str).unique())
    order = {k: i for i, k in enumerate(METRIC_ORDER)}
    labels = sorted(m[["label", "metric", "horizon"]].drop_duplicates().itertuples(index=False),
                    key=lambda r: (order.get(r.metric, 99), r.metric,
                                   -1 if pd.isna(r.horizon) else float(r.horizon)))
    rows, best_cells = [], []
    for lab in labels:
        part = m[m["label"] == lab.label]
        stats = {model: mean_ci(part.loc[part["model"].astype(str) == model, "value"]) for model in models}
        row = [lab.label]
        for model in models:
            mean, lo, hi, n = stats[model]
            cell = fmt(mean) if n else "–"
            if n > 1 and math.isfinite(lo):
                cell += f" [{fmt(lo)}, {fmt(hi)}]"
            row.append(cell)
        direction = HIGHER_IS_BETTER.get(lab.metric)
        means = {k: v[0] for k, v in stats.items() if v[3] and math.isfinite(v[0])}
        if direction is not None and len(means) > 1:
            pick = max if direction else min
            best_cells.append((len(rows), 1 + models.index(pick(means, key=means.get))))
        n_folds = max((v[3] for v in stats.values()), default=0)
        row.append(n_folds)
        rows.append(row)
    table = Table(["metric", *models, "folds"], rows,
                  "Out-of-fold survival metrics: mean [95% CI] across folds (t distribution)",
                  numeric=set(range(1, len(models) + 2)))
    for r, c in best_cells:
        table.rows[r][c] = table.rows[r][c] + " ★"
    table.note = ("★ best mean per metric (higher is better except ibs, mse, logrank_p). HR: hazard "
                  "ratio high vs low predicted risk group.")
    return {"kind": "table", "table": table}


def _calibration_curves(preds: dict[str, pd.DataFrame], bins: int = 4) -> dict:
    """{horizon: {model: frame(predicted, observed)}} by quantile bins of predicted survival."""
    from sksurv.nonparametric import kaplan_meier_estimator

    curves: dict = {}
    for model, pred in preds.items():
        for col in pred.columns:
            h = _surv_horizon(col)
            if h is None:
                continue
            part = pred[["time", "event", col]].dropna()
            n_bins = min(bins, len(part) // 3)  # at least 3 subjects per bin
            if n_bins < 2:
                continue
            q = pd.qcut(part[col].rank(method="first"), n_bins, labels=False)
            points = []
            for _, grp in part.groupby(q):
                t, s = kaplan_meier_estimator(grp["event"].astype(bool).to_numpy(),
                                              grp["time"].astype(float).to_numpy())
                observed = float(s[t <= h][-1]) if (t <= h).any() else 1.0
                points.append({"predicted": float(grp[col].mean()), "observed": observed})
            curves.setdefault(h, {})[model] = pd.DataFrame(points)
    return curves


def _new_predictions_table(inp: Inputs) -> dict | None:
    """Final-model predictions for the subjects without a usable outcome: one row per
    subject, predicted days and risk group per model."""
    rows = {}
    for model in inp.survival_models():
        pred = inp.parquet(L.survival(model, "predictions_new.parquet"))
        if pred is None or pred.empty:
            continue
        for rec in pred.itertuples():
            row = rows.setdefault(str(rec.subject), {"subject": str(rec.subject)})
            row[f"{model} days"] = getattr(rec, "predicted_days", np.nan)
            row[f"{model} risk group"] = getattr(rec, "risk_group", None) or "–"
    if not rows:
        return None
    frame = pd.DataFrame(list(rows.values())).sort_values("subject").reset_index(drop=True)
    return table(frame, caption=f"Predictions of the final models for subjects without a usable "
                                 f"outcome ({len(frame)}): days = predicted median survival",
                  sortable=True)


def survival_section(inp: Inputs) -> dict:
    blocks = []
    excluded = excluded_subjects(inp)
    if excluded:
        blocks.append(table(pd.DataFrame({"subject": list(excluded), "reason": list(excluded.values())}),
                             caption=f"Subjects left out of survival cross-validation ({len(excluded)}): "
                                     "the final models predict them (below)"))
    new_predictions = _new_predictions_table(inp)
    if new_predictions is not None:
        blocks.append(new_predictions)
    metrics = inp.parquet(L.survival("metrics.parquet"))
    if metrics is not None and {"model", "metric", "value"} <= set(metrics.columns) and len(metrics):
        blocks.append(_metrics_table(metrics))
        for model, stats in harrell_by_model(metrics).items():
            why = chance_explanation(inp, model, stats)
            if why:
                blocks.append(text(why, "note"))
    else:
        blocks.append(missing("Survival metrics (survival/metrics.parquet)"))
    comparisons = inp.parquet(L.survival("comparisons.parquet"))
    if comparisons is not None and len(comparisons):
        blocks.append(table(comparisons.reset_index(drop=True),
                             caption="Paired model comparisons (difference a - b, permutation p)"))
    models = inp.survival_models()
    preds = {}
    for model in models:
        pred = inp.parquet(L.survival(model, "predictions.parquet"))
        if pred is not None and {"time", "event"} <= set(pred.columns) and len(pred):
            preds[model] = first_repeat(pred).copy()
    km = []
    for model, pred in preds.items():
        if "risk_group" not in pred or pred["risk_group"].isna().all():
            if "risk" not in pred:
                continue
            pred["risk_group"] = np.where(pred["risk"] > pred["risk"].median(), "high", "low")
        pred = pred[pred["risk_group"].notna()]
        if len(pred):
            km.append({"title": f"Kaplan-Meier: {model}", "uri": F.kaplan_meier_panel(pred, model),
                       "caption": "out-of-fold risk groups (split at the training-fold median)"})
    if km:
        blocks.append(heading("Kaplan-Meier curves by predicted risk group", "km"))
        blocks.append({"kind": "figgrid", "figures": km})
    else:
        blocks.append(missing("Kaplan-Meier curves (survival/{model}/predictions.parquet)"))
    if metrics is not None and "horizon" in metrics and (metrics["metric"] == "auc_td").any():
        rows = []
        for (model, h), part in metrics[metrics["metric"] == "auc_td"].groupby(["model", "horizon"]):
            mean, lo, hi, _ = mean_ci(part["value"])
            rows.append({"model": model, "horizon": float(h), "mean": mean, "lo": lo, "hi": hi})
        if rows:
            blocks.append(figure("Time-dependent AUC", F.time_auc_curves(pd.DataFrame(rows)),
                                  "mean over folds with 95% CI band", width=620))
    curves = _calibration_curves(preds)
    if curves:
        blocks.append(figure("Calibration", F.calibration_plot(curves),
                              "mean predicted survival vs Kaplan-Meier estimate in quartiles of "
                              "predicted survival, per horizon"))
    elif any(_surv_horizon(c) is not None for p in preds.values() for c in p.columns):
        blocks.append(missing("Calibration (fewer than 6 subjects with predicted survival)"))
    emb = inp.parquet(L.survival("embeddings.parquet"))
    if emb is not None and {"x", "y"} <= set(emb.columns) and len(emb):
        blocks.append(figure("Embedding of the feature table", F.embedding_scatter(emb),
                              "2-D projection coloured by survival class", width=560))
    for model in models:
        att = inp.parquet(L.survival(model, "attention.parquet"))
        if att is None or att.empty:
            continue
        numeric = [c for c in att.columns if pd.api.types.is_numeric_dtype(att[c])]
        x = next((c for c in numeric if "pos" in c.lower()), numeric[0] if numeric else None)
        y = next((c for c in numeric if "att" in c.lower() or "weight" in c.lower()), None)
        if x and y and x != y:
            group = "plane" if "plane" in att.columns else None
            blocks.append(figure(f"Attention against slice position: {model}",
                                  F.attention_plot(att, model, x, y, group), width=560))
    return {"id": "survival", "title": "Survival", "blocks": blocks}
