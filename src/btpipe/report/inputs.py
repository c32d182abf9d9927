"""What the report reads: the results folder (btpipe.layout), read once and forgiving.

A missing file is None to the sections (they say "not available"); a file that exists but
cannot be read is recorded in ``Inputs.problems`` and shown in the provenance section.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..layout import Layout
from .blocks import fmt

# Paths relative to the results folder the report reads.
L = Layout()


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


def flags_of(value) -> list[str]:
    """Flags from a ';'-joined string or a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v)]
    if isinstance(value, float) and math.isnan(value):
        return []
    return [f for f in str(value).split(";") if f.strip()]


def cohort_subjects(inp: Inputs) -> list[str]:
    """Every subject seen in any output (folders, cohort tables, predictions)."""
    seen = set(inp.subjects_on_disk())
    for rel in (L.cohort("qc"), L.cohort("features"), L.cohort("seg_metrics")):
        frame = inp.parquet(rel)
        if frame is not None and "subject" in frame:
            seen |= set(frame["subject"].astype(str))
    for model in inp.survival_models():
        frame = inp.parquet(L.survival(model, "predictions.parquet"))
        if frame is not None and "subject" in frame:
            seen |= set(frame["subject"].astype(str))
    return sorted(seen)


def excluded_subjects(inp: Inputs) -> dict[str, str]:
    """{subject: reason} from survival/excluded.json (dict or list layouts)."""
    data = inp.json(L.survival("excluded.json"))
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
                detail = item.get("detail")
                out[str(item["subject"])] = fmt(why) + (f" ({detail})" if detail else "")
            else:
                out[str(item)] = ""
    return out


def series_found(inp: Inputs, subject: str, ingest_record: dict):
    """How many series ingest saw for a subject: `n_series` of ingest.json, else
    the rows of series.parquet (None when neither exists, e.g. a failed ingest)."""
    if ingest_record.get("n_series") is not None:
        return ingest_record["n_series"]
    table = inp.parquet(L.series_table(subject))
    return None if table is None else len(table)


def qc_flags_by_subject(inp: Inputs, subjects) -> dict[str, list[str]]:
    qc = inp.parquet(L.cohort("qc"))
    out = {}
    if qc is not None and {"subject", "flags"} <= set(qc.columns):
        out = {str(s): flags_of(f) for s, f in zip(qc["subject"], qc["flags"])}
    for s in subjects:
        if s not in out:
            rec = inp.json(L.qc(s))
            if isinstance(rec, dict):
                out[s] = flags_of(rec.get("flags"))
    return out


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
        pred = inp.parquet(L.survival(model, "predictions.parquet"))
        if pred is not None and {"subject", "time", "event"} <= set(pred.columns):
            frame = pred[["subject", "time", "event"]].drop_duplicates("subject")
            frame = frame.assign(subject=frame["subject"].astype(str),
                                 event=frame["event"].astype(bool))
            return frame, L.survival(model, "predictions.parquet")
    return None, ""


def first_repeat(pred: pd.DataFrame) -> pd.DataFrame:
    """One out-of-fold prediction per subject (the first repeat), finite risks only."""
    if "repeat" in pred:
        pred = pred[pred["repeat"] == pred["repeat"].min()]
    return pred[np.isfinite(pd.to_numeric(pred["risk"], errors="coerce"))] if "risk" in pred else pred
