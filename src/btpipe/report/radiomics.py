"""The report's radiomics section: feature counts, missing values, slice coverage, and the
features' univariate C-index (statistics from btpipe.survival.metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import SEQUENCES
from ..survival.metrics import univariate_cindex
from . import figures as F
from .blocks import figure, missing, table
from .inputs import L, Inputs, survival_outcomes
from .segmentation import REGIONS


SUBREGIONS = ("NCR", "ED", "NET")


def _parse_feature(column: str) -> tuple[str, str, str, str] | None:
    """'{seq}_{region}_{imagetype}_{class}_{feature}' -> (seq, region, imagetype, class)."""
    parts = column.split("_", 4)
    if len(parts) == 5 and parts[0] in SEQUENCES:
        return parts[0], parts[1], parts[2], parts[3]
    return None


def feature_cindex(features: pd.DataFrame, outcomes: pd.DataFrame, columns,
                   min_subjects: int = 5, tied_tol: float = 1e-8) -> pd.DataFrame:
    """Harrell's C of each feature taken as a risk score, on each feature's non-missing
    subjects (as sksurv's concordance_index_censored; tested). Columns with fewer than
    `min_subjects` values, no event or a single value are left out."""
    merged = features.assign(subject=features["subject"].astype(str)).merge(outcomes, on="subject")
    event = merged["event"].to_numpy(bool)
    X = merged[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    c = univariate_cindex(X, event, merged["time"].to_numpy(float), tied_tol=tied_tol)
    finite = np.isfinite(X)
    n = finite.sum(axis=0)
    spread = np.nanmax(np.where(finite, X, -np.inf), axis=0) - np.nanmin(np.where(finite, X, np.inf), axis=0) \
        if X.size else np.zeros(0)
    has_event = (finite & event[:, None]).any(axis=0)
    keep = np.isfinite(c) & (n >= min_subjects) & has_event & (spread > 0)
    frame = pd.DataFrame({"feature": list(columns), "c_index": c, "abs_dev": np.abs(c - 0.5), "n": n})
    return frame[keep].reset_index(drop=True)


def radiomics_section(inp: Inputs, config: dict, top: int = 15) -> dict:
    features = inp.parquet(L.cohort("features"))
    if features is None or "subject" not in features:
        return {"id": "radiomics", "title": "Radiomics",
                "blocks": [missing("Radiomic features (cohort/features.parquet)")]}
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
        blocks.append(table(counts.reset_index(), caption="Features per sequence and region"))
        by_class = grid.groupby(["class"]).size().rename("features").reset_index()
        by_image = grid.groupby(["image"]).size().rename("features").reset_index()
        blocks.append({"kind": "details", "summary": "Features per class and image type",
                       "blocks": [table(by_class), table(by_image)]})
    if empty_cols:
        empty = pd.DataFrame({"region": [c[:-len("_empty")] for c in empty_cols],
                              "subjects with empty region": [int(pd.to_numeric(features[c], errors="coerce")
                                                                 .fillna(0).astype(bool).sum())
                                                             for c in empty_cols]})
        blocks.append(table(empty, caption="Empty regions (features missing for these subjects)"))
    if feat_cols:
        share = features[feat_cols].isna().mean()
        blocks.append(figure("Missing values per feature", F.feature_missing_hist(share), width=520))
        worst = share[share > 0].sort_values(ascending=False).head(10)
        if len(worst):
            blocks.append(table(pd.DataFrame({"feature": worst.index, "missing (%)": 100 * worst.values}),
                                 caption="Features with the most missing values"))
    blocks.extend(_slice_coverage_blocks(inp))
    outcomes, source = survival_outcomes(inp, config)
    if outcomes is not None and feat_cols:
        cidx = feature_cindex(features, outcomes, feat_cols)
        if len(cidx):
            best = cidx.sort_values("abs_dev", ascending=False).head(top).drop(columns="abs_dev")
            blocks.append(table(best.reset_index(drop=True),
                                 caption=f"Top {len(best)} features by univariate C-index",
                                 note=f"Harrell's C of each feature as a risk score (as sksurv "
                                      f"concordance_index_censored) against survival from the {source}; "
                                      "C < 0.5 means higher values go with longer survival. Computed "
                                      "on the whole cohort, for description only: the models select "
                                      "features inside each training fold."))
        else:
            blocks.append(missing("Univariate C-index (no feature had comparable pairs)"))
    else:
        blocks.append(missing("Univariate C-index (no survival times found)"))
    return {"id": "radiomics", "title": "Radiomics", "blocks": blocks}


def _slice_coverage_blocks(inp: Inputs) -> list[dict]:
    """Anchor-slice bags: tumour coverage of the selected slices per plane."""
    cov = inp.parquet(L.cohort("slice_coverage"))
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
    return [table(frame.reset_index(drop=True),
                   caption="Anchor-slice bags: fraction of tumour pixels in the selected slices",
                   note="; ".join(notes))]
