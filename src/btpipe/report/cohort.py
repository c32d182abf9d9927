"""Report sections about the subjects: demo box, cohort overview, gallery, preprocessing QC."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from .. import SEQUENCES
from . import figures as F
from .blocks import fmt, missing, table, text
from .inputs import L, Inputs, excluded_subjects, flags_of, qc_flags_by_subject, series_found
from .survival import chance_explanation, harrell_by_model


DEMO_TARGETS = {"brain_mask_dice": 0.95, "wt_dice": 0.85}


def demo_section(inp: Inputs, config: dict) -> dict | None:
    """Out-of-fold accuracy against the demo's ground truth, with pass/fail targets."""
    if not (config.get("demo") or {}).get("enabled"):
        return None
    rows = []
    qc = inp.parquet(L.cohort("qc"))
    if qc is not None and "brain_mask_dice_reference" in qc:
        d = qc["brain_mask_dice_reference"].astype(float).dropna()
        if len(d):
            ok = d.mean() >= DEMO_TARGETS["brain_mask_dice"]
            rows.append(["Brain-mask Dice vs truth", f"mean {d.mean():.3f}, min {d.min():.3f} "
                         f"(n={len(d)})", f">= {DEMO_TARGETS['brain_mask_dice']} (mean)",
                         "PASS" if ok else "FAIL"])
    if len(rows) == 0:
        rows.append(["Brain-mask Dice vs truth", "not available", f">= {DEMO_TARGETS['brain_mask_dice']}", "–"])
    seg = inp.parquet(L.cohort("seg_metrics"))
    wt = None
    if seg is not None and {"region", "metric", "value"} <= set(seg.columns):
        wt = seg[(seg["region"] == "WT") & (seg["metric"] == "dice")]["value"].astype(float).dropna()
    if wt is not None and len(wt):
        ok = wt.mean() >= DEMO_TARGETS["wt_dice"]
        rows.append(["WT Dice vs truth (out-of-fold)", f"mean {wt.mean():.3f}, min {wt.min():.3f} "
                     f"(n={len(wt)})", f">= {DEMO_TARGETS['wt_dice']} (mean)", "PASS" if ok else "FAIL"])
    else:
        rows.append(["WT Dice vs truth (out-of-fold)", "not available", f">= {DEMO_TARGETS['wt_dice']}", "–"])
    harrell = harrell_by_model(inp.parquet(L.survival("metrics.parquet")))
    notes = []
    for model, stats in harrell.items():
        mean, lo, hi, n = stats
        ci = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""
        why = chance_explanation(inp, model, stats)
        rows.append([f"Survival C-index (Harrell), {model}", f"{mean:.3f}{ci} (folds={n})",
                     "> 0.5 = better than chance",
                     "at or below chance (why: below)" if why else "above chance"])
        notes += [why] if why else []
    if not harrell:
        rows.append(["Survival C-index", "not available", "", "–"])
    frame = pd.DataFrame(rows, columns=["measure", "value", "target", "result"])
    block = table(frame, numeric=set())
    for row in block["table"].rows:
        row[3] = {"PASS": "✔ pass", "FAIL": "✘ fail"}.get(row[3], row[3])
    block["table"].row_classes = ["failed" if r[3].endswith("fail") else "" for r in block["table"].rows]
    return {"id": "demo", "title": "Demo accuracy",
            "blocks": [{"kind": "demo", "title": "Demo accuracy (out-of-fold)", "table": block["table"]},
                       text("Scores against the demo cohort's known truth; every score comes from a "
                             "model that did not train on that subject.", "note"),
                       *[text(note, "note") for note in notes]]}


def cohort_section(inp: Inputs, subjects: list[str]) -> dict:
    blocks = []
    if not subjects:
        return {"id": "cohort", "title": "Cohort overview",
                "blocks": [missing("Subjects (no outputs under results_dir yet)")]}
    features = inp.parquet(L.cohort("features"))
    feat_subjects = set(features["subject"].astype(str)) if features is not None and "subject" in features else set()
    surv_subjects = set()
    for model in inp.survival_models():
        pred = inp.parquet(L.survival(model, "predictions.parquet"))
        if pred is not None and "subject" in pred:
            surv_subjects |= set(pred["subject"].astype(str))
    excluded = excluded_subjects(inp)
    rows, classes, failures = [], [], []
    seq_counts = {s: 0 for s in SEQUENCES}
    n_ok = n_failed = n_pre = n_seg = 0
    for s in subjects:
        rec = inp.json(L.ingest_record(s)) or {}
        status = rec.get("status") or ("–" if not rec else "unknown")
        seqs = sorted((rec.get("sequences") or {}).keys(),
                      key=lambda q: SEQUENCES.index(q) if q in SEQUENCES else 99)
        for q in seqs:
            if q in seq_counts:
                seq_counts[q] += 1
        has_pre = inp.path(L.qc(s)).exists()
        has_seg = inp.path(L.seg(s)).exists()
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
        rows.append([s, status, " ".join(seqs) or "–", series_found(inp, s, rec), stages or "–",
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
        {"value": len(excluded), "label": "left out of survival CV"}]})
    if failures:
        blocks.append(table(pd.DataFrame(failures, columns=["subject", "error", "file"]),
                             caption=f"Failed subjects ({len(failures)})",
                             row_classes=["failed"] * len(failures)))
    else:
        blocks.append(text("No subject failed at ingest.", "note"))
    blocks.append(table(pd.DataFrame([seq_counts]), caption="Subjects with each sequence found"))
    frame = pd.DataFrame(rows, columns=["subject", "ingest", "sequences", "series found",
                                        "outputs", "warnings", "excluded from survival", "error"])
    frame["series found"] = pd.to_numeric(frame["series found"], errors="coerce").astype("Int64")
    blocks.append(table(frame, caption="Subjects", sortable=True, row_classes=classes,
                         numeric={3}))
    return {"id": "cohort", "title": "Cohort overview", "blocks": blocks}


def _gallery_card(inp: Inputs, subject: str, flags: list[str], convention) -> dict:
    card = {"subject": subject, "flags": flags, "montage": None, "overlay": None,
            "overlay_missing": "segmentation overlay not available", "overlay_caption": ""}
    montage = inp.path(L.qc(subject, "png"))
    if montage.exists():
        try:
            card["montage"] = F.image_file_thumbnail(montage)
        except Exception as exc:  # unreadable image: say so on the card
            inp.problems.append(f"subjects/{subject}/preproc/qc.png: {exc}")
    t1ce = inp.path(L.preproc("t1ce", subject))
    seg = inp.path(L.seg(subject))
    if t1ce.exists():
        try:
            card["overlay"], z = F.segmentation_overlay(
                t1ce, seg if seg.exists() else None,
                inp.path(L.brain_mask(subject)), convention)
            what = "segmentation" if seg.exists() else "no segmentation yet"
            card["overlay_caption"] = f"T1ce axial slice {z} ({what}; brain-mask outline in blue)"
        except Exception as exc:
            inp.problems.append(f"subjects/{subject}: overlay failed: {exc}")
            card["overlay_missing"] = f"overlay failed: {type(exc).__name__}"
    return card


def gallery_section(inp: Inputs, subjects: list[str], config: dict, workers: int = 2) -> dict:
    from ..labels import resolve_convention

    try:
        convention = resolve_convention(config.get("labels", "brats2021"))
    except Exception:
        convention = {1: "NCR", 2: "ED", 4: "ET"}
    flags = qc_flags_by_subject(inp, subjects)
    todo = [s for s in subjects
            if inp.path(L.qc(s, "png")).exists()
            or inp.path(L.preproc("t1ce", s)).exists()]
    if not todo:
        return {"id": "gallery", "title": "QC gallery",
                "blocks": [missing("QC montages and segmentation overlays")]}
    # Image decoding is zlib/numpy work that releases the GIL: threads help.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        cards = list(pool.map(lambda s: _gallery_card(inp, s, flags.get(s, []), convention), todo))
    legend = [(name, "#%02x%02x%02x" % F.TISSUE_RGB[name])
              for name in dict.fromkeys(convention.values()) if name in F.TISSUE_RGB]
    legend.append(("brain mask", "#%02x%02x%02x" % F.MASK_OUTLINE_RGB))
    blocks = [text("Left: preprocessing QC montage; right: T1ce (atlas space) through the largest "
                    "tumour area with the segmentation and the brain-mask outline. Click an image "
                    "to enlarge it. Cards with QC flags are outlined in orange.", "note"),
              {"kind": "legend", "entries": legend},
              {"kind": "gallery", "cards": cards}]
    return {"id": "gallery", "title": "QC gallery", "blocks": blocks}


def _qc_frame(inp: Inputs, subjects) -> pd.DataFrame | None:
    """One row per subject: cohort/qc.parquet, else assembled from qc.json files."""
    qc = inp.parquet(L.cohort("qc"))
    if qc is not None and "subject" in qc:
        return qc.copy()
    rows = []
    for s in subjects:
        rec = inp.json(L.qc(s))
        if isinstance(rec, dict):
            row = {"subject": s}
            for key, value in rec.items():
                if key == "subject":
                    continue
                if key == "similarity" and isinstance(value, dict):
                    row.update({f"similarity_{k}": v for k, v in value.items()})
                elif key == "flags":
                    row["flags"] = ";".join(flags_of(value))
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
                "blocks": [missing("Preprocessing QC (cohort/qc.parquet or qc.json)")]}
    qc = qc.sort_values("subject").reset_index(drop=True)
    flags = [flags_of(f) for f in qc["flags"]] if "flags" in qc else [[] for _ in range(len(qc))]
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
        blocks.append(table(pd.DataFrame({"flag": counts.index, "subjects": counts.values}),
                             caption="QC flags"))
    display = qc.copy()
    for col in display.columns:
        if display[col].map(lambda v: isinstance(v, (dict, list, np.ndarray))).any():
            display[col] = display[col].map(fmt)
    if "flags" in display:
        display["flags"] = [" ".join(f) for f in flags]
    blocks.append(table(display, caption="Preprocessing QC per subject", sortable=True,
                         row_classes=["flagged" if f else "" for f in flags]))
    return {"id": "preproc", "title": "Preprocessing QC", "blocks": blocks}
