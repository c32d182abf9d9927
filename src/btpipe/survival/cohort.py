"""Who the survival models learn from, and who they only predict for.

A real cohort has partial outcomes: BraTS 2020 gives survival for 236 of
its 369 training subjects, and none for its validation subjects. Every
subject that passed ingest has image features; the survival table splits
them into

* the *development* table: a valid outcome, no excluding QC flag, inside
  the configured subset (``survival.subset``, e.g. gross-total resection
  only); cross-validation and the final models use these subjects;
* the *new* table: everyone else, each with the reason they are not in the
  development table. The final models predict for them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..samples import parse_survival
from .data import EVENT_FALSE, EVENT_TRUE, is_missing

# Reasons a subject is left out of cross-validation (excluded.json, the report).
NO_OUTCOME_ROW = "no outcome row"
MISSING_TIME = "missing time"
MISSING_EVENT = "missing event"
INVALID_OUTCOME = "invalid outcome"
QC_FLAG = "QC flag"
OUTSIDE_SUBSET = "outside the survival subset"

# Column that clinical-table joins add: False where the table had no row for the subject.
CLINICAL_ROW = "_clinical_row"


def outcome_problem(row: pd.Series, time_col: str, event_col=None) -> tuple[str, str] | None:
    """(reason, detail) when the row has no usable outcome, else None."""
    subject = row.get("subject")
    if row.get(CLINICAL_ROW) is False:
        return NO_OUTCOME_ROW, "the clinical table has no row for this subject"
    value = row.get(time_col)
    try:
        days, text_event = parse_survival(value, subject=subject)
    except InputError as exc:
        return INVALID_OUTCOME, f"{time_col}: {exc}"
    if days is None:
        return MISSING_TIME, f"{time_col} is empty"
    if text_event is not None or not event_col:
        return None
    event = row.get(event_col)
    if is_missing(event):
        return MISSING_EVENT, f"{event_col} is empty"
    if str(event).strip().lower() not in EVENT_TRUE | EVENT_FALSE:
        return INVALID_OUTCOME, f"{event_col} {event!r} is not 0/1 (1 = death, 0 = censored)"
    return None


def subset_problem(row: pd.Series, subset: dict | None) -> tuple[str, str] | None:
    """(reason, detail) when the row is outside ``subset`` ({column: allowed values})."""
    for column, allowed in (subset or {}).items():
        value = row.get(column)
        text = "NA" if is_missing(value) else str(value).strip()
        if text not in {str(a).strip() for a in allowed}:
            return OUTSIDE_SUBSET, f"{column} is {text}, the subset keeps {list(allowed)}"
    return None


def qc_problem(flags: list[str], excluded_flags) -> tuple[str, str] | None:
    hit = sorted(set(flags) & set(excluded_flags or ()))
    return (QC_FLAG, ", ".join(hit)) if hit else None


def split_cohort(table: pd.DataFrame, time_col: str, event_col, qc_flags: dict,
                 excluded_flags=(), subset=None):
    """(development rows, new rows, excluded records) of a table with one row per subject.

    ``qc_flags`` {subject: [flag, ...]}. Each excluded record is {subject,
    reason, detail}; the first problem found is the reason (outcome, then QC,
    then subset).
    """
    keep, excluded = [], []
    for _, row in table.iterrows():
        problem = (outcome_problem(row, time_col, event_col)
                   or qc_problem(qc_flags.get(row["subject"], []), excluded_flags)
                   or subset_problem(row, subset))
        keep.append(problem is None)
        if problem is not None:
            excluded.append({"subject": str(row["subject"]), "reason": problem[0],
                             "detail": problem[1]})
    keep = np.asarray(keep, dtype=bool)
    columns = [c for c in table.columns if c != CLINICAL_ROW]
    return (table.loc[keep, columns].reset_index(drop=True),
            table.loc[~keep, columns].reset_index(drop=True), excluded)


def qc_flags_by_subject(qc: pd.DataFrame) -> dict[str, list[str]]:
    """{subject: flags} from cohort/qc.parquet (flags joined by ';')."""
    return {str(rec["subject"]): [f for f in str(rec.get("flags") or "").split(";") if f]
            for _, rec in qc.iterrows()}
