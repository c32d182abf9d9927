"""Display blocks of the report: tables, text, headings, figures, and number formatting.

Every section returns {"id", "title", "blocks"}; one Jinja2 template renders the blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Table:
    columns: list
    rows: list
    caption: str = ""
    numeric: set = field(default_factory=set)
    row_classes: list | None = None
    sortable: bool = False
    note: str = ""


def table(frame: pd.DataFrame, caption="", sortable=False, row_classes=None, note="",
           numeric=None) -> dict:
    """A table block from a frame, numbers formatted, numeric columns right-aligned."""
    if numeric is None:
        numeric = {i for i, c in enumerate(frame.columns)
                   if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}
    rows = [[fmt(v) for v in rec] for rec in frame.itertuples(index=False, name=None)]
    return {"kind": "table", "table": Table([str(c) for c in frame.columns], rows, caption,
                                            set(numeric), row_classes, sortable, note)}


def missing(what: str) -> dict:
    return {"kind": "missing", "text": f"{what}: not available."}


def text(text: str, cls: str = "") -> dict:
    return {"kind": "text", "text": text, "cls": cls}


def heading(text: str, id_: str = "") -> dict:
    return {"kind": "heading", "text": text, "id": id_}


def figure(title: str, uri: str, caption: str = "", width: int | None = None) -> dict:
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
