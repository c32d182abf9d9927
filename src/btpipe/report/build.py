"""Build the self-contained evaluation report (report/report.html).

``build_report`` reads whatever exists under results_dir; a missing or
unreadable input makes its section say "not available" and never stops the
report. Each ``*_section`` function turns files into a list of display blocks
(tables, figures, text) that one Jinja2 template renders; images are inline
data URIs, so the HTML file is the whole report.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .. import SEQUENCES, __version__
from ..io import write_text
from . import figures as F
from .methods import installed_version, methods_paragraphs

log = logging.getLogger("btpipe.report")

REGIONS = ("WT", "TC", "ET")
SUBREGIONS = ("NCR", "ED", "NET")
DEMO_TARGETS = {"brain_mask_dice": 0.95, "wt_dice": 0.85}
# Metric direction for highlighting the best model (True: higher is better).
HIGHER_IS_BETTER = {"c_harrell": True, "c_uno": True, "c_td": True, "auc_td": True,
                    "ibs": False, "class_accuracy": True, "mse": False, "spearman": True,
                    "logrank_p": False, "hr": True}
METRIC_ORDER = ["c_harrell", "c_uno", "c_td", "auc_td", "ibs", "hr", "logrank_p",
                "class_accuracy", "mse", "spearman"]
PACKAGES = ("numpy", "pandas", "nibabel", "antspyx", "deepbet", "torch", "monai",
            "pyradiomics", "scikit-survival", "lifelines", "snakemake", "dcm2niix", "matplotlib")


# ------------------------------------------------------------------ blocks
@dataclass
class Table:
    columns: list
    rows: list
    caption: str = ""
    numeric: set = field(default_factory=set)
    row_classes: list | None = None
    sortable: bool = False
    note: str = ""


def _table(frame: pd.DataFrame, caption="", sortable=False, row_classes=None, note="",
           numeric=None) -> dict:
    """A table block from a frame, numbers formatted, numeric columns right-aligned."""
    if numeric is None:
        numeric = {i for i, c in enumerate(frame.columns)
                   if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}
    rows = [[fmt(v) for v in rec] for rec in frame.itertuples(index=False, name=None)]
    return {"kind": "table", "table": Table([str(c) for c in frame.columns], rows, caption,
                                            set(numeric), row_classes, sortable, note)}


def _missing(what: str) -> dict:
    return {"kind": "missing", "text": f"{what}: not available."}


def _text(text: str, cls: str = "") -> dict:
    return {"kind": "text", "text": text, "cls": cls}


def _heading(text: str, id_: str = "") -> dict:
    return {"kind": "heading", "text": text, "id": id_}


def _figure(title: str, uri: str, caption: str = "", width: int | None = None) -> dict:
    return {"kind": "figure", "title": title, "uri": uri, "caption": caption, "width": width}


def fmt(value) -> str:
    """Human formatting: NaN/None as an en dash, floats to about 3 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3g}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(fmt(v) for v in value)
    try:
        if pd.isna(value):
            return "–"
    except (TypeError, ValueError):
        pass
    return str(value)


# ------------------------------------------------------------------ inputs
class Inputs:
    """Reads result files once; records the ones that exist but cannot be read."""

    def __init__(self, results_dir: Path):
        self.root = Path(results_dir)
        self.problems: list[str] = []
        self._cache: dict = {}

    def path(self, rel) -> Path:
        return self.root / rel

    def parquet(self, rel) -> pd.DataFrame | None:
        if rel not in self._cache:
            self._cache[rel] = self._read(rel, pd.read_parquet)
        return self._cache[rel]

    def csv(self, rel) -> pd.DataFrame | None:
        if rel not in self._cache:
            self._cache[rel] = self._read(rel, pd.read_csv)
        return self._cache[rel]

    def json(self, rel):
        if rel not in self._cache:
            self._cache[rel] = self._read(rel, lambda p: json.loads(p.read_text(encoding="utf-8")))
        return self._cache[rel]

    def _read(self, rel, reader):
        path = self.root / rel
        if not path.exists():
            return None
        try:
            return reader(path)
        except Exception as exc:  # any unreadable input: report it, keep building
            self.problems.append(f"{rel}: {type(exc).__name__}: {exc}")
            return None

    def subjects_on_disk(self) -> list[str]:
        root = self.root / "subjects"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def survival_models(self) -> list[str]:
        root = self.root / "survival"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "predictions.parquet").exists())


# ------------------------------------------------------------------ helpers
def _flags(value) -> list[str]:
    """Flags from a ';'-joined string or a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v)]
    if isinstance(value, float) and math.isnan(value):
        return []
    return [f for f in str(value).split(";") if f.strip()]


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and t-based confidence interval over folds: (mean, lo, hi, n)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1:
        return mean, float("nan"), float("nan"), 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def _metric_label(metric, horizon) -> str:
    if horizon is None or (isinstance(horizon, float) and math.isnan(horizon)):
        return str(metric)
    return f"{metric} @ {float(horizon):g} d"


def _surv_horizon(column: str) -> float | None:
    """'surv_365d' / 'surv_365' -> 365.0; anything else -> None."""
    match = re.fullmatch(r"surv_(\d+(?:\.\d+)?)d?", column)
    return float(match.group(1)) if match else None


# ------------------------------------------------------------------ sections
def demo_section(inp: Inputs, config: dict) -> dict | None:
    """Out-of-fold accuracy against the demo's ground truth, with pass/fail targets."""
    if not (config.get("demo") or {}).get("enabled"):
        return None
    rows = []
    qc = inp.parquet("cohort/qc.parquet")
    if qc is not None and "brain_mask_dice_reference" in qc:
        d = qc["brain_mask_dice_reference"].astype(float).dropna()
        if len(d):
            ok = d.mean() >= DEMO_TARGETS["brain_mask_dice"]
            rows.append(["Brain-mask Dice vs truth", f"mean {d.mean():.3f}, min {d.min():.3f} "
                         f"(n={len(d)})", f">= {DEMO_TARGETS['brain_mask_dice']} (mean)",
                         "PASS" if ok else "FAIL"])
    if len(rows) == 0:
        rows.append(["Brain-mask Dice vs truth", "not available", f">= {DEMO_TARGETS['brain_mask_dice']}", "–"])
    seg = inp.parquet("cohort/seg_metrics.parquet")
    wt = None
    if seg is not None and {"region", "metric", "value"} <= set(seg.columns):
        wt = seg[(seg["region"] == "WT") & (seg["metric"] == "dice")]["value"].astype(float).dropna()
    if wt is not None and len(wt):
        ok = wt.mean() >= DEMO_TARGETS["wt_dice"]
        rows.append(["WT Dice vs truth (out-of-fold)", f"mean {wt.mean():.3f}, min {wt.min():.3f} "
                     f"(n={len(wt)})", f">= {DEMO_TARGETS['wt_dice']} (mean)", "PASS" if ok else "FAIL"])
    else:
        rows.append(["WT Dice vs truth (out-of-fold)", "not available", f">= {DEMO_TARGETS['wt_dice']}", "–"])
    metrics = inp.parquet("survival/metrics.parquet")
    if metrics is not None and {"model", "metric", "value"} <= set(metrics.columns):
        for model, part in metrics[metrics["metric"] == "c_harrell"].groupby("model", sort=True):
            mean, lo, hi, n = mean_ci(part["value"])
            ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""
            rows.append([f"Survival C-index (Harrell), {model}", f"{mean:.3f}{ci} (folds={n})",
                         "> 0.5 = better than chance", "–"])
    else:
        rows.append(["Survival C-index", "not available", "", "–"])
    frame = pd.DataFrame(rows, columns=["measure", "value", "target", "result"])
    block = _table(frame, numeric=set())
    for row in block["table"].rows:
        row[3] = {"PASS": "✔ pass", "FAIL": "✘ fail"}.get(row[3], row[3])
    block["table"].row_classes = ["failed" if r[3].endswith("fail") else "" for r in block["table"].rows]
    return {"id": "demo", "title": "Demo accuracy",
            "blocks": [{"kind": "demo", "title": "Demo accuracy (out-of-fold)", "table": block["table"]},
                       _text("Scores against the demo cohort's known truth; every score comes from a "
                             "model that did not train on that subject.", "note")]}


def cohort_subjects(inp: Inputs) -> list[str]:
    """Every subject seen in any output (folders, cohort tables, predictions)."""
    seen = set(inp.subjects_on_disk())
    for rel in ("cohort/qc.parquet", "cohort/features.parquet", "cohort/seg_metrics.parquet"):
        frame = inp.parquet(rel)
        if frame is not None and "subject" in frame:
            seen |= set(frame["subject"].astype(str))
    for model in inp.survival_models():
        frame = inp.parquet(f"survival/{model}/predictions.parquet")
        if frame is not None and "subject" in frame:
            seen |= set(frame["subject"].astype(str))
    return sorted(seen)


def _excluded(inp: Inputs) -> dict[str, str]:
    """{subject: reason} from survival/excluded.json (dict or list layouts)."""
    data = inp.json("survival/excluded.json")
    if not data:
        return {}
    if isinstance(data, dict) and "excluded" in data:
        data = data["excluded"]
    out = {}
    if isinstance(data, dict):
        for subject, why in data.items():
            out[str(subject)] = fmt(why)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and "subject" in item:
                why = item.get("reason") or item.get("flags") or ""
                out[str(item["subject"])] = fmt(why)
            else:
                out[str(item)] = ""
    return out


def cohort_section(inp: Inputs, subjects: list[str]) -> dict:
    blocks = []
    if not subjects:
        return {"id": "cohort", "title": "Cohort overview",
                "blocks": [_missing("Subjects (no outputs under results_dir yet)")]}
    features = inp.parquet("cohort/features.parquet")
    feat_subjects = set(features["subject"].astype(str)) if features is not None and "subject" in features else set()
    surv_subjects = set()
    for model in inp.survival_models():
        pred = inp.parquet(f"survival/{model}/predictions.parquet")
        if pred is not None and "subject" in pred:
            surv_subjects |= set(pred["subject"].astype(str))
    excluded = _excluded(inp)
    rows, classes, failures = [], [], []
    seq_counts = {s: 0 for s in SEQUENCES}
    n_ok = n_failed = n_pre = n_seg = 0
    for s in subjects:
        rec = inp.json(f"subjects/{s}/nifti/ingest.json") or {}
        status = rec.get("status") or ("–" if not rec else "unknown")
        seqs = sorted((rec.get("sequences") or {}).keys(),
                      key=lambda q: SEQUENCES.index(q) if q in SEQUENCES else 99)
        for q in seqs:
            if q in seq_counts:
                seq_counts[q] += 1
        has_pre = inp.path(f"subjects/{s}/preproc/qc.json").exists()
        has_seg = inp.path(f"subjects/{s}/seg/seg.nii.gz").exists()
        n_ok += status == "ok"
        n_failed += status == "failed"
        n_pre += has_pre
        n_seg += has_seg
        warnings = rec.get("warnings") or []
        if status == "failed":
            failures.append([s, rec.get("error") or "(no message)", rec.get("file") or "–"])
        stages = " ".join(name for name, ok in (("preproc", has_pre), ("seg", has_seg),
                                                  ("features", s in feat_subjects),
                                                  ("survival", s in surv_subjects)) if ok)
        rows.append([s, status, " ".join(seqs) or "–", rec.get("series_found"), stages or "–",
                     "; ".join(map(str, warnings)), excluded.get(s, ""),
                     rec.get("error") or ""])
        classes.append("failed" if status == "failed" else ("flagged" if s in excluded else ""))
    blocks.append({"kind": "stats", "entries": [
        {"value": len(subjects), "label": "subjects"},
        {"value": n_ok, "label": "ingested"},
        {"value": n_failed, "label": "failed at ingest"},
        {"value": n_pre, "label": "preprocessed"},
        {"value": n_seg, "label": "segmented"},
        {"value": len(feat_subjects), "label": "with features"},
        {"value": len(surv_subjects), "label": "in survival models"},
        {"value": len(excluded), "label": "excluded by QC"}]})
    if failures:
        blocks.append(_table(pd.DataFrame(failures, columns=["subject", "error", "file"]),
                             caption=f"Failed subjects ({len(failures)})",
                             row_classes=["failed"] * len(failures)))
    else:
        blocks.append(_text("No subject failed at ingest.", "note"))
    blocks.append(_table(pd.DataFrame([seq_counts]), caption="Subjects with each sequence found"))
    frame = pd.DataFrame(rows, columns=["subject", "ingest", "sequences", "series found",
                                        "outputs", "warnings", "excluded from survival", "error"])
    frame["series found"] = pd.to_numeric(frame["series found"], errors="coerce").astype("Int64")
    blocks.append(_table(frame, caption="Subjects", sortable=True, row_classes=classes,
                         numeric={3}))
    return {"id": "cohort", "title": "Cohort overview", "blocks": blocks}


def _gallery_card(inp: Inputs, subject: str, flags: list[str], convention) -> dict:
    card = {"subject": subject, "flags": flags, "montage": None, "overlay": None,
            "overlay_missing": "segmentation overlay not available", "overlay_caption": ""}
    montage = inp.path(f"subjects/{subject}/preproc/qc.png")
    if montage.exists():
        try:
            card["montage"] = F.image_file_thumbnail(montage)
        except Exception as exc:  # unreadable image: say so on the card
            inp.problems.append(f"subjects/{subject}/preproc/qc.png: {exc}")
    t1ce = inp.path(f"subjects/{subject}/preproc/t1ce.nii.gz")
    seg = inp.path(f"subjects/{subject}/seg/seg.nii.gz")
    if t1ce.exists():
        try:
            card["overlay"], z = F.segmentation_overlay(
                t1ce, seg if seg.exists() else None,
                inp.path(f"subjects/{subject}/preproc/brain_mask.nii.gz"), convention)
            what = "segmentation" if seg.exists() else "no segmentation yet"
            card["overlay_caption"] = f"T1ce axial slice {z} ({what}; brain-mask outline in blue)"
        except Exception as exc:
            inp.problems.append(f"subjects/{subject}: overlay failed: {exc}")
            card["overlay_missing"] = f"overlay failed: {type(exc).__name__}"
    return card


def _qc_flags_by_subject(inp: Inputs, subjects) -> dict[str, list[str]]:
    qc = inp.parquet("cohort/qc.parquet")
    out = {}
    if qc is not None and {"subject", "flags"} <= set(qc.columns):
        out = {str(s): _flags(f) for s, f in zip(qc["subject"], qc["flags"])}
    for s in subjects:
        if s not in out:
            rec = inp.json(f"subjects/{s}/preproc/qc.json")
            if isinstance(rec, dict):
                out[s] = _flags(rec.get("flags"))
    return out


def gallery_section(inp: Inputs, subjects: list[str], config: dict, workers: int = 2) -> dict:
    from ..labels import resolve_convention

    try:
        convention = resolve_convention(config.get("labels", "brats2021"))
    except Exception:
        convention = {1: "NCR", 2: "ED", 4: "ET"}
    flags = _qc_flags_by_subject(inp, subjects)
    todo = [s for s in subjects
            if inp.path(f"subjects/{s}/preproc/qc.png").exists()
            or inp.path(f"subjects/{s}/preproc/t1ce.nii.gz").exists()]
    if not todo:
        return {"id": "gallery", "title": "QC gallery",
                "blocks": [_missing("QC montages and segmentation overlays")]}
    # Image decoding is zlib/numpy work that releases the GIL: threads help.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        cards = list(pool.map(lambda s: _gallery_card(inp, s, flags.get(s, []), convention), todo))
    legend = [(name, "#%02x%02x%02x" % F.TISSUE_RGB[name])
              for name in dict.fromkeys(convention.values()) if name in F.TISSUE_RGB]
    legend.append(("brain mask", "#%02x%02x%02x" % F.MASK_OUTLINE_RGB))
    blocks = [_text("Left: preprocessing QC montage; right: T1ce (atlas space) through the largest "
                    "tumour area with the segmentation and the brain-mask outline. Click an image "
                    "to enlarge it. Cards with QC flags are outlined in orange.", "note"),
              {"kind": "legend", "entries": legend},
              {"kind": "gallery", "cards": cards}]
    return {"id": "gallery", "title": "QC gallery", "blocks": blocks}


def _qc_frame(inp: Inputs, subjects) -> pd.DataFrame | None:
    """One row per subject: cohort/qc.parquet, else assembled from qc.json files."""
    qc = inp.parquet("cohort/qc.parquet")
    if qc is not None and "subject" in qc:
        return qc.copy()
    rows = []
    for s in subjects:
        rec = inp.json(f"subjects/{s}/preproc/qc.json")
        if isinstance(rec, dict):
            row = {"subject": s}
            for key, value in rec.items():
                if key == "subject":
                    continue
                if key == "similarity" and isinstance(value, dict):
                    row.update({f"similarity_{k}": v for k, v in value.items()})
                elif key == "flags":
                    row["flags"] = ";".join(_flags(value))
                elif key == "timings" and isinstance(value, dict):
                    numbers = [v for v in value.values() if isinstance(v, (int, float))]
                    row["time_total_s"] = float(sum(numbers)) if numbers else None
                else:
                    row[key] = value
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def preproc_section(inp: Inputs, subjects) -> dict:
    qc = _qc_frame(inp, subjects)
    if qc is None or qc.empty:
        return {"id": "preproc", "title": "Preprocessing QC",
                "blocks": [_missing("Preprocessing QC (cohort/qc.parquet or qc.json)")]}
    qc = qc.sort_values("subject").reset_index(drop=True)
    flags = [_flags(f) for f in qc["flags"]] if "flags" in qc else [[] for _ in range(len(qc))]
    counts = pd.Series([f for fl in flags for f in fl], dtype=object).value_counts()
    blocks = [{"kind": "stats", "entries": [
        {"value": len(qc), "label": "subjects with QC"},
        {"value": sum(1 for f in flags if f), "label": "with QC flags"}]}]
    if "brain_volume_ml" in qc:
        v = pd.to_numeric(qc["brain_volume_ml"], errors="coerce").dropna()
        if len(v):
            blocks[0]["entries"].append({"value": f"{v.median():.0f} ml", "label": "median brain volume"})
    if "brain_mask_dice_reference" in qc:
        d = pd.to_numeric(qc["brain_mask_dice_reference"], errors="coerce").dropna()
        if len(d):
            blocks[0]["entries"].append({"value": f"{d.mean():.3f}", "label": "mean brain-mask Dice vs reference"})
    if len(counts):
        blocks.append(_table(pd.DataFrame({"flag": counts.index, "subjects": counts.values}),
                             caption="QC flags"))
    display = qc.copy()
    for col in display.columns:
        if display[col].map(lambda v: isinstance(v, (dict, list, np.ndarray))).any():
            display[col] = display[col].map(fmt)
    if "flags" in display:
        display["flags"] = [" ".join(f) for f in flags]
    blocks.append(_table(display, caption="Preprocessing QC per subject", sortable=True,
                         row_classes=["flagged" if f else "" for f in flags]))
    return {"id": "preproc", "title": "Preprocessing QC", "blocks": blocks}


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
    morder = {m: i for i, m in enumerate(["dice", "hd95", "sensitivity", "specificity"])}
    frame["_r"] = frame["region"].map(order).fillna(9)
    frame["_m"] = frame["metric"].map(morder).fillna(9)
    return frame.sort_values(["_m", "_r"]).drop(columns=["_r", "_m"]).reset_index(drop=True)


def segmentation_section(inp: Inputs) -> dict:
    blocks = []
    metrics = inp.parquet("cohort/seg_metrics.parquet")
    summary = _seg_summary_frame(inp.parquet("cohort/seg_summary.parquet"), metrics)
    if summary is not None:
        blocks.append(_table(summary, caption="Segmentation scores (out-of-fold, atlas space); "
                                              "HD95 in mm"))
    else:
        blocks.append(_missing("Segmentation score summary (cohort/seg_summary.parquet)"))
    if metrics is not None and {"subject", "region", "metric", "value"} <= set(metrics.columns) \
            and len(metrics):
        blocks.append(_figure("Segmentation scores by region", F.seg_boxplots(metrics),
                              "boxes: median and quartiles; diamond: mean; dots: subjects"))
        wide = metrics.pivot_table(index="subject", columns=["metric", "region"], values="value",
                                   aggfunc="first")
        wide.columns = [f"{m} {r}" for m, r in wide.columns]
        keep = [f"{m} {r}" for m in ("dice", "hd95") for r in REGIONS if f"{m} {r}" in wide.columns]
        wide = wide[keep].reset_index()
        blocks.append({"kind": "details", "summary": f"Scores per subject ({len(wide)})",
                       "blocks": [_table(wide, sortable=True)]})
    else:
        blocks.append(_missing("Per-subject segmentation scores (cohort/seg_metrics.parquet)"))
    log_frame = inp.csv("models/segmentation/training_log.csv")
    if log_frame is not None and {"step"} <= set(log_frame.columns) and len(log_frame):
        blocks.append(_figure("Training curves", F.training_curves(log_frame),
                              "training loss and validation Dice per fold model and the final model"))
    else:
        blocks.append(_missing("Training curves (models/segmentation/training_log.csv)"))
    return {"id": "segmentation", "title": "Segmentation", "blocks": blocks}


def _parse_feature(column: str) -> tuple[str, str, str, str] | None:
    """'{seq}_{region}_{imagetype}_{class}_{feature}' -> (seq, region, imagetype, class)."""
    parts = column.split("_", 4)
    if len(parts) == 5 and parts[0] in SEQUENCES:
        return parts[0], parts[1], parts[2], parts[3]
    return None


def survival_outcomes(inp: Inputs, config: dict) -> tuple[pd.DataFrame | None, str]:
    """(subject, time, event) for univariate C-indices, and where they came from.

    The samples sheet first (as the brief of the survival stage reads it), then
    the out-of-fold prediction files, which carry each subject's time and event.
    """
    surv = config.get("survival") or {}
    time_col, event_col = surv.get("time"), surv.get("event")
    try:
        from ..samples import load_samples, parse_survival

        sheet = load_samples(config)
        if time_col in sheet.columns:
            rows = []
            for subject, raw, ev in zip(sheet["subject"], sheet[time_col],
                                        sheet[event_col] if event_col in sheet.columns
                                        else [None] * len(sheet)):
                days, parsed_event = parse_survival(raw, subject=subject)
                if days is None:
                    continue
                event = parsed_event if parsed_event is not None else (
                    1 if ev is None or (isinstance(ev, float) and math.isnan(ev)) else int(ev))
                rows.append({"subject": str(subject), "time": days, "event": bool(event)})
            if rows:
                return pd.DataFrame(rows), "samples sheet"
    except Exception:  # no sheet here (e.g. report rebuilt elsewhere): try the predictions
        pass
    for model in inp.survival_models():
        pred = inp.parquet(f"survival/{model}/predictions.parquet")
        if pred is not None and {"subject", "time", "event"} <= set(pred.columns):
            frame = pred[["subject", "time", "event"]].drop_duplicates("subject")
            frame = frame.assign(subject=frame["subject"].astype(str),
                                 event=frame["event"].astype(bool))
            return frame, f"survival/{model}/predictions.parquet"
    return None, ""


def comparable_pairs(event, time) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) that Harrell's C compares, with scikit-survival's rules.

    i had the event and j lived longer, or j was censored at i's event time
    (as sksurv.metrics.concordance_index_censored counts them).
    """
    event = np.asarray(event, bool)
    time = np.asarray(time, float)
    later = time[None, :] > time[:, None]
    censored_same = (time[None, :] == time[:, None]) & ~event[None, :]
    return np.nonzero(event[:, None] & (later | censored_same))


def univariate_cindex(features: pd.DataFrame, outcomes: pd.DataFrame, columns,
                      min_subjects: int = 5, tied_tol: float = 1e-8,
                      max_cells: int = 4_000_000) -> pd.DataFrame:
    """Harrell's C of each feature taken as a risk score; NaNs dropped per feature.

    Equal to sksurv's concordance_index_censored on each feature's non-missing
    subjects (tested), but vectorised over features: thousands of radiomic
    columns cost seconds, not minutes. Columns with fewer than `min_subjects`
    values, no event or a single value are left out.
    """
    merged = features.assign(subject=features["subject"].astype(str)).merge(outcomes, on="subject")
    time_ = merged["time"].to_numpy(float)
    event = merged["event"].to_numpy(bool)
    X = merged[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    finite = np.isfinite(X)
    i, j = comparable_pairs(event, time_)
    c = np.full(X.shape[1], np.nan)
    if i.size:
        step = max(1, max_cells // i.size)
        for start in range(0, X.shape[1], step):
            block = slice(start, start + step)
            valid = finite[i, block] & finite[j, block]
            diff = X[i, block] - X[j, block]
            ties = valid & (np.abs(diff) <= tied_tol)
            concordant = valid & ~ties & (diff > 0)
            n_valid = valid.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                c[block] = np.where(n_valid > 0, (concordant.sum(0) + 0.5 * ties.sum(0)) / n_valid, np.nan)
    n = finite.sum(axis=0)
    spread = np.nanmax(np.where(finite, X, -np.inf), axis=0) - np.nanmin(np.where(finite, X, np.inf), axis=0) \
        if X.size else np.zeros(0)
    has_event = (finite & event[:, None]).any(axis=0)
    keep = np.isfinite(c) & (n >= min_subjects) & has_event & (spread > 0)
    frame = pd.DataFrame({"feature": list(columns), "c_index": c, "abs_dev": np.abs(c - 0.5), "n": n})
    return frame[keep].reset_index(drop=True)


def radiomics_section(inp: Inputs, config: dict, top: int = 15) -> dict:
    features = inp.parquet("cohort/features.parquet")
    if features is None or "subject" not in features:
        return {"id": "radiomics", "title": "Radiomics",
                "blocks": [_missing("Radiomic features (cohort/features.parquet)")]}
    surv = config.get("survival") or {}
    reserved = {"subject", surv.get("time"), surv.get("event")}
    empty_cols = [c for c in features.columns if c.endswith("_empty")]
    feat_cols = [c for c in features.columns if c not in reserved and c not in empty_cols
                 and pd.api.types.is_numeric_dtype(features[c])]
    parsed = {c: _parse_feature(c) for c in feat_cols}
    n_shape = sum(1 for c in feat_cols if c.startswith("shape_") or (parsed[c] and parsed[c][3] == "shape"))
    blocks = [{"kind": "stats", "entries": [
        {"value": len(features), "label": "subjects"},
        {"value": len(feat_cols), "label": "feature columns"},
        {"value": n_shape, "label": "shape features"},
        {"value": f"{100 * float(features[feat_cols].isna().to_numpy().mean()):.1f}%"
         if feat_cols else "–", "label": "missing values overall"}]}]
    grid = pd.DataFrame([p for p in parsed.values() if p], columns=["sequence", "region", "image", "class"])
    if len(grid):
        counts = grid.pivot_table(index="sequence", columns="region", aggfunc="size", fill_value=0)
        counts = counts.reindex([s for s in SEQUENCES if s in counts.index])
        counts = counts[[r for r in (*REGIONS, *SUBREGIONS) if r in counts.columns]
                        + [r for r in counts.columns if r not in (*REGIONS, *SUBREGIONS)]]
        blocks.append(_table(counts.reset_index(), caption="Features per sequence and region"))
        by_class = grid.groupby(["class"]).size().rename("features").reset_index()
        by_image = grid.groupby(["image"]).size().rename("features").reset_index()
        blocks.append({"kind": "details", "summary": "Features per class and image type",
                       "blocks": [_table(by_class), _table(by_image)]})
    if empty_cols:
        empty = pd.DataFrame({"region": [c[:-len("_empty")] for c in empty_cols],
                              "subjects with empty region": [int(pd.to_numeric(features[c], errors="coerce")
                                                                 .fillna(0).astype(bool).sum())
                                                             for c in empty_cols]})
        blocks.append(_table(empty, caption="Empty regions (features missing for these subjects)"))
    if feat_cols:
        missing = features[feat_cols].isna().mean()
        blocks.append(_figure("Missing values per feature", F.feature_missing_hist(missing), width=520))
        worst = missing[missing > 0].sort_values(ascending=False).head(10)
        if len(worst):
            blocks.append(_table(pd.DataFrame({"feature": worst.index, "missing (%)": 100 * worst.values}),
                                 caption="Features with the most missing values"))
    blocks.extend(_slice_coverage_blocks(inp))
    outcomes, source = survival_outcomes(inp, config)
    if outcomes is not None and feat_cols:
        cidx = univariate_cindex(features, outcomes, feat_cols)
        if len(cidx):
            best = cidx.sort_values("abs_dev", ascending=False).head(top).drop(columns="abs_dev")
            blocks.append(_table(best.reset_index(drop=True),
                                 caption=f"Top {len(best)} features by univariate C-index",
                                 note=f"Harrell's C of each feature as a risk score (as sksurv "
                                      f"concordance_index_censored) against survival from the {source}; "
                                      "C < 0.5 means higher values go with longer survival. Computed "
                                      "on the whole cohort, for description only: the models select "
                                      "features inside each training fold."))
        else:
            blocks.append(_missing("Univariate C-index (no feature had comparable pairs)"))
    else:
        blocks.append(_missing("Univariate C-index (no survival times found)"))
    return {"id": "radiomics", "title": "Radiomics", "blocks": blocks}


def _slice_coverage_blocks(inp: Inputs) -> list[dict]:
    """Anchor-slice bags: tumour coverage of the selected slices per plane."""
    cov = inp.parquet("cohort/slice_coverage.parquet")
    if cov is None or not {"subject", "plane", "coverage"} <= set(cov.columns) or cov.empty:
        return []
    g = cov.groupby("plane", sort=False)["coverage"]
    frame = pd.DataFrame({"subjects": g.count(), "mean coverage": g.mean(),
                          "min coverage": g.min()}).reset_index()
    order = {p: i for i, p in enumerate(("sagittal", "coronal", "axial", "mean"))}
    frame = frame.sort_values("plane", key=lambda c: c.map(order).fillna(9))
    notes = []
    if "K" in cov:
        notes.append(f"K = {', '.join(str(int(k)) for k in sorted(cov['K'].dropna().unique()))} slices")
    if "empty_tumour" in cov:
        notes.append(f"{int(cov.drop_duplicates('subject')['empty_tumour'].astype(bool).sum())} "
                     "subjects without tumour")
    if "bytes" in cov:
        notes.append(f"median bag size {cov.drop_duplicates('subject')['bytes'].median() / 1e3:.0f} kB")
    return [_table(frame.reset_index(drop=True),
                   caption="Anchor-slice bags: fraction of tumour pixels in the selected slices",
                   note="; ".join(notes))]


def _metrics_table(metrics: pd.DataFrame) -> dict:
    """metric x model table of 'mean [95% CI]' over folds, best model in bold."""
    m = metrics.copy()
    if "horizon" not in m:
        m["horizon"] = np.nan
    m["label"] = [_metric_label(a, h) for a, h in zip(m["metric"], m["horizon"])]
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


def _first_repeat(pred: pd.DataFrame) -> pd.DataFrame:
    """One out-of-fold prediction per subject (the first repeat), finite risks only."""
    if "repeat" in pred:
        pred = pred[pred["repeat"] == pred["repeat"].min()]
    return pred[np.isfinite(pd.to_numeric(pred["risk"], errors="coerce"))] if "risk" in pred else pred


def survival_section(inp: Inputs) -> dict:
    blocks = []
    excluded = _excluded(inp)
    if excluded:
        blocks.append(_table(pd.DataFrame({"subject": list(excluded), "reason": list(excluded.values())}),
                             caption=f"Subjects excluded from survival modelling by QC flags ({len(excluded)})"))
    metrics = inp.parquet("survival/metrics.parquet")
    if metrics is not None and {"model", "metric", "value"} <= set(metrics.columns) and len(metrics):
        blocks.append(_metrics_table(metrics))
    else:
        blocks.append(_missing("Survival metrics (survival/metrics.parquet)"))
    comparisons = inp.parquet("survival/comparisons.parquet")
    if comparisons is not None and len(comparisons):
        blocks.append(_table(comparisons.reset_index(drop=True),
                             caption="Paired model comparisons (difference a - b, permutation p)"))
    models = inp.survival_models()
    preds = {}
    for model in models:
        pred = inp.parquet(f"survival/{model}/predictions.parquet")
        if pred is not None and {"time", "event"} <= set(pred.columns) and len(pred):
            preds[model] = _first_repeat(pred).copy()
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
        blocks.append(_heading("Kaplan-Meier curves by predicted risk group", "km"))
        blocks.append({"kind": "figgrid", "figures": km})
    else:
        blocks.append(_missing("Kaplan-Meier curves (survival/{model}/predictions.parquet)"))
    if metrics is not None and "horizon" in metrics and (metrics["metric"] == "auc_td").any():
        rows = []
        for (model, h), part in metrics[metrics["metric"] == "auc_td"].groupby(["model", "horizon"]):
            mean, lo, hi, _ = mean_ci(part["value"])
            rows.append({"model": model, "horizon": float(h), "mean": mean, "lo": lo, "hi": hi})
        if rows:
            blocks.append(_figure("Time-dependent AUC", F.time_auc_curves(pd.DataFrame(rows)),
                                  "mean over folds with 95% CI band", width=620))
    curves = _calibration_curves(preds)
    if curves:
        blocks.append(_figure("Calibration", F.calibration_plot(curves),
                              "mean predicted survival vs Kaplan-Meier estimate in quartiles of "
                              "predicted survival, per horizon"))
    elif any(_surv_horizon(c) is not None for p in preds.values() for c in p.columns):
        blocks.append(_missing("Calibration (fewer than 6 subjects with predicted survival)"))
    emb = inp.parquet("survival/embeddings.parquet")
    if emb is not None and {"x", "y"} <= set(emb.columns) and len(emb):
        blocks.append(_figure("Embedding of the feature table", F.embedding_scatter(emb),
                              "2-D projection coloured by survival class", width=560))
    for model in models:
        att = inp.parquet(f"survival/{model}/attention.parquet")
        if att is None or att.empty:
            continue
        numeric = [c for c in att.columns if pd.api.types.is_numeric_dtype(att[c])]
        x = next((c for c in numeric if "pos" in c.lower()), numeric[0] if numeric else None)
        y = next((c for c in numeric if "att" in c.lower() or "weight" in c.lower()), None)
        if x and y and x != y:
            group = "plane" if "plane" in att.columns else None
            blocks.append(_figure(f"Attention against slice position: {model}",
                                  F.attention_plot(att, model, x, y, group), width=560))
    return {"id": "survival", "title": "Survival", "blocks": blocks}


def methods_section(config: dict, results_dir: Path) -> dict:
    paragraphs, refs = methods_paragraphs(config, results_dir)
    if not paragraphs:
        return {"id": "methods", "title": "Methods", "blocks": [_missing("Methods (nothing has run yet)")]}
    return {"id": "methods", "title": "Methods",
            "blocks": [_text("Generated from the outputs and configuration of this run.", "note"),
                       {"kind": "methods", "paragraphs": paragraphs, "references": refs}]}


def benchmark_table(results_dir: Path) -> pd.DataFrame | None:
    """Per-rule run times from Snakemake benchmark files benchmarks/{rule}/{wildcards}.tsv."""
    root = Path(results_dir) / "benchmarks"
    if not root.is_dir():
        return None
    import csv

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):  # Snakemake writes NA or - when it could not measure
            return float("nan")

    rows = []
    # The csv module, not pandas: hundreds of one-line files, read in milliseconds.
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                records = list(csv.DictReader(fh, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        for rec in records:
            rows.append({"rule": rule, "s": number(rec.get("s")), "max_rss": number(rec.get("max_rss"))})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    g = frame.groupby("rule")
    out = pd.DataFrame({"jobs": g.size(), "total (s)": g["s"].sum(), "median (s)": g["s"].median(),
                        "max (s)": g["s"].max(), "max RSS (MB)": g["max_rss"].max()})
    return out.sort_values("total (s)", ascending=False).reset_index()


def _default_run_info(config: dict) -> dict:
    from ..config import config_digest

    return {"btpipe version": __version__, "config digest": config_digest(config),
            "python": sys.version.split()[0],
            "packages": {name: installed_version(name) or "not installed" for name in PACKAGES}}


def provenance_section(config: dict, run_info: dict | None, results_dir: Path, inp: Inputs,
                       build_seconds: float) -> dict:
    info = dict(run_info) if run_info else _default_run_info(config)
    blocks = []
    if not run_info:
        blocks.append(_text("No run information was passed; versions below are those installed where "
                            "the report was built.", "note"))
    scalars = [(str(k).replace("_", " "), fmt(v)) for k, v in info.items() if not isinstance(v, dict)]
    scalars.append(("report build time", f"{build_seconds:.1f} s (before writing)"))
    blocks.append(_table(pd.DataFrame(scalars, columns=["item", "value"]), caption="Run"))
    for key, value in info.items():
        if isinstance(value, dict):
            blocks.append(_table(pd.DataFrame([(k, fmt(v)) for k, v in value.items()],
                                              columns=["name", "value"]),
                                 caption=str(key).replace("_", " ")))
    bench = benchmark_table(results_dir)
    if bench is not None:
        blocks.append(_table(bench, caption="Run time per rule (Snakemake benchmark files)",
                             sortable=True))
    else:
        blocks.append(_missing("Per-rule run times (benchmarks/**/*.tsv)"))
    try:
        import yaml

        config_text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    except Exception:
        config_text = json.dumps(config, indent=2, default=str)
    blocks.append({"kind": "details", "summary": "Configuration",
                   "blocks": [{"kind": "pre", "text": config_text}]})
    if inp.problems:
        blocks.append(_table(pd.DataFrame({"input": inp.problems}),
                             caption="Inputs that exist but could not be read"))
    return {"id": "provenance", "title": "Provenance", "blocks": blocks}


# ------------------------------------------------------------------ render
def _template_text(name: str) -> str:
    return resources.files("btpipe.report").joinpath("templates", name).read_text(encoding="utf-8")


def render_html(context: dict) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True)
    template = env.from_string(_template_text("report.html.j2"))
    return template.render(css=Markup(_template_text("report.css")),
                           js=Markup(_template_text("report.js")), **context)


def _guarded(name: str, build, inp: Inputs) -> dict | None:
    """Run one section builder; an unexpected error becomes a 'not available' note."""
    try:
        return build()
    except Exception as exc:
        log.exception("report section %s failed", name)
        inp.problems.append(f"section {name}: {type(exc).__name__}: {exc}")
        return {"id": name, "title": name.capitalize(),
                "blocks": [_missing(f"{name.capitalize()} (error while building: {type(exc).__name__}: {exc})")]}


def build_report(results_dir, config, out_path, run_info=None) -> Path:
    """Write the self-contained HTML evaluation report and return its path.

    Inputs: results_dir (the pipeline's output folder; any subset of its files
    may exist), config (the effective configuration dict), run_info (optional
    dict of provenance: versions, commit, command line, times). Output:
    out_path, written atomically; images are embedded as data URIs.
    """
    start = time.perf_counter()
    results_dir = Path(results_dir)
    config = dict(config or {})
    inp = Inputs(results_dir)
    subjects = cohort_subjects(inp)
    builders = [
        ("demo", lambda: demo_section(inp, config)),
        ("cohort", lambda: cohort_section(inp, subjects)),
        ("gallery", lambda: gallery_section(inp, subjects, config)),
        ("preproc", lambda: preproc_section(inp, subjects)),
        ("segmentation", lambda: segmentation_section(inp)),
        ("radiomics", lambda: radiomics_section(inp, config)),
        ("survival", lambda: survival_section(inp)),
        ("methods", lambda: methods_section(config, results_dir)),
    ]
    sections = [s for s in (_guarded(n, b, inp) for n, b in builders) if s]
    sections.append(_guarded("provenance", lambda: provenance_section(
        config, run_info, results_dir, inp, time.perf_counter() - start), inp))
    context = {
        "title": (config.get("report") or {}).get("title") or "btpipe evaluation report",
        "version": __version__,
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "results_dir": str(results_dir),
        "sections": sections,
    }
    html = render_html(context)
    out_path = Path(out_path)
    write_text(out_path, html)
    return out_path
