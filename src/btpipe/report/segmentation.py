"""The report's segmentation section: out-of-fold scores, lesion-wise tables, training curves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures as F
from .blocks import figure, missing, table, text
from .inputs import L, Inputs


REGIONS = ("WT", "TC", "ET")


SEG_METRIC_ORDER = ["dice", "hd95", "sensitivity", "specificity",
                    "lw_dice", "lw_hd95", "lw_nsd", "lesions_tp", "lesions_fp", "lesions_fn"]


LESION_COLUMNS = {"volume_mm3": "volume (mm³)", "detected": "detected", "dice": "Dice",
                  "hd95": "HD95 (mm)", "nsd": "NSD"}


def _seg_summary_frame(summary: pd.DataFrame | None, metrics: pd.DataFrame | None) -> pd.DataFrame | None:
    """region x metric table of 'mean ± sd' and median, from the summary or per-subject table."""
    if summary is None and metrics is not None and {"region", "metric", "value"} <= set(metrics.columns):
        g = metrics.groupby(["region", "metric"])["value"]
        summary = pd.concat([g.mean().rename("mean"), g.median().rename("median"),
                             g.std().rename("std")], axis=1).reset_index().melt(
            id_vars=["region", "metric"], var_name="statistic", value_name="value")
    if summary is None or not {"region", "metric", "statistic", "value"} <= set(summary.columns):
        return None
    wide = summary.pivot_table(index=["region", "metric"], columns="statistic", values="value",
                               aggfunc="first")
    rows = []
    for (region, metric), rec in wide.iterrows():
        rows.append({"region": region, "metric": metric,
                     "mean": rec.get("mean", np.nan), "sd": rec.get("std", np.nan),
                     "median": rec.get("median", np.nan)})
    frame = pd.DataFrame(rows)
    order = {r: i for i, r in enumerate(REGIONS)}
    morder = {m: i for i, m in enumerate(SEG_METRIC_ORDER)}
    frame["_r"] = frame["region"].map(order).fillna(9)
    frame["_m"] = frame["metric"].map(morder).fillna(9)
    return frame.sort_values(["_m", "_r"]).drop(columns=["_r", "_m"]).reset_index(drop=True)


def _lesion_frame(inp: Inputs, subjects) -> pd.DataFrame | None:
    """One row per reference lesion, from the subjects' seg/metrics.json (lesion-wise scoring)."""
    rows = []
    for subject in subjects:
        scores = inp.json(L.seg_metrics(subject))
        for region in REGIONS:
            lesions = scores.get(region, {}).get("lesions") if isinstance(scores, dict) else None
            for lesion in lesions or []:
                rows.append({"subject": subject, "region": region, "lesion": lesion.get("lesion"),
                             **{label: lesion.get(key) for key, label in LESION_COLUMNS.items()}})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    frame["volume (mm³)"] = frame["volume (mm³)"].round().astype("int64")  # whole mm³ read best
    return frame


def _lesion_blocks(inp: Inputs, metrics: pd.DataFrame) -> list[dict]:
    lesions = _lesion_frame(inp, sorted(metrics["subject"].astype(str).unique()))
    if lesions is None:
        return []
    missed = int((~lesions["detected"].astype(bool)).sum())
    spurious = metrics.loc[metrics["metric"] == "lesions_fp", "value"].sum()
    note = (f"{len(lesions)} reference lesions, {missed} missed; {spurious:.0f} spurious predicted "
            "lesions (counted in lesions_fp, no per-lesion sizes). Dice, HD95 and NSD of matched "
            "lesions; lesion-wise scores are their means per subject and region.")
    return [{"kind": "details", "summary": f"Lesions per subject ({len(lesions)})",
             "blocks": [table(lesions, sortable=True, note=note)]}]


def segmentation_section(inp: Inputs) -> dict:
    blocks = []
    metrics = inp.parquet(L.cohort("seg_metrics"))
    summary = _seg_summary_frame(inp.parquet(L.cohort("seg_summary")), metrics)
    if summary is not None:
        blocks.append(table(summary, caption="Segmentation scores (out-of-fold, atlas space); "
                                              "HD95 in mm"))
    else:
        blocks.append(missing("Segmentation score summary (cohort/seg_summary.parquet)"))
    if metrics is not None and {"subject", "region", "metric", "value"} <= set(metrics.columns) \
            and len(metrics):
        blocks.append(figure("Segmentation scores by region", F.seg_boxplots(metrics),
                              "boxes: median and quartiles; diamond: mean; dots: subjects"))
        wide = metrics.pivot_table(index="subject", columns=["metric", "region"], values="value",
                                   aggfunc="first")
        wide.columns = [f"{m} {r}" for m, r in wide.columns]
        keep = [f"{m} {r}" for m in ("dice", "hd95", "lw_dice", "lw_hd95") for r in REGIONS
                if f"{m} {r}" in wide.columns]
        wide = wide[keep].reset_index()
        blocks.append({"kind": "details", "summary": f"Scores per subject ({len(wide)})",
                       "blocks": [table(wide, sortable=True)]})
        blocks += _lesion_blocks(inp, metrics)
    else:
        blocks.append(missing("Per-subject segmentation scores (cohort/seg_metrics.parquet)"))
    log_frame = inp.csv(L.seg_models("training_log.csv"))
    if log_frame is not None and {"step"} <= set(log_frame.columns) and len(log_frame):
        blocks.append(figure("Training curves", F.training_curves(log_frame),
                              "training loss and validation Dice per fold model (and the final model, "
                              "when one was trained: it has no held-out subjects)"))
    else:
        blocks.append(missing("Training curves (models/segmentation/training_log.csv)"))
    return {"id": "segmentation", "title": "Segmentation", "blocks": blocks}


def provided_labels_section(config: dict) -> dict | None:
    """With segmentation.mode provided there is nothing to score: say so instead."""
    seg = config.get("segmentation") or {}
    if seg.get("mode") != "provided":
        return None
    note = ("Segmentation mode 'provided': each subject's expert labels are its segmentation, "
            "so no segmentation model was trained and no Dice is shown.")
    if seg.get("model_path"):
        note += f" Subjects without labels were segmented by {seg['model_path']}."
    return {"id": "segmentation", "title": "Segmentation", "blocks": [text(note, "note")]}
