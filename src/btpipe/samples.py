"""The samples sheet: reading, checking and resolving one row per subject.

Structural problems (unknown or misspelt columns, bad or duplicate subject
ids, no input columns) stop the run before any job and name the row and
field. Missing files are a per-subject problem: that subject's ingest fails
with the file named, the others go on.
"""

from __future__ import annotations

import difflib
import os
import math
import re
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd

from . import SEQUENCES
from .config import load_schema
from .demo import layout as demo_layout
from .errors import ConfigError, InputError

PATH_COLUMNS = ("dicom_dir", *SEQUENCES, "seg", "brain_mask")
KNOWN_COLUMNS = ("subject", *PATH_COLUMNS, "space", "age", "survival_days", "event",
                 "extent_of_resection")
SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ALIVE_RE = re.compile(r"^\s*alive\s*\(\s*(\d+(?:\.\d+)?)\s*days?\s*later\s*\)\s*$", re.I)


def read_table(path) -> pd.DataFrame:
    """Read a TSV or CSV sheet as strings-or-numbers, keeping 'NA' as text."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"samples sheet {path} not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    frame.columns = [c.strip() for c in frame.columns]
    return frame


def _misspelt_columns(columns, allowed_extra) -> list[str]:
    problems = []
    for col in columns:
        if col in KNOWN_COLUMNS or col in allowed_extra:
            continue
        close = difflib.get_close_matches(col.lower(), KNOWN_COLUMNS, n=1, cutoff=0.75)
        if close:
            problems.append(f"column {col!r} is not known: did you mean {close[0]!r}?")
    return problems


def _coerce(value):
    """Sheet cell -> None, number or stripped string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text == "":
        return None
    try:
        number = float(text)
        return int(number) if number.is_integer() and "." not in text else number
    except ValueError:
        return text


def check_rows(frame: pd.DataFrame, allowed_extra=()) -> list[str]:
    """All structural problems of a sheet, each naming the row and field."""
    problems = []
    if "subject" not in frame.columns:
        return ["samples sheet: required column 'subject' is missing"]
    problems += _misspelt_columns(frame.columns, set(allowed_extra))
    inputs = [c for c in ("dicom_dir", *SEQUENCES) if c in frame.columns]
    if not inputs:
        problems.append("samples sheet: needs a 'dicom_dir' column or NIfTI columns "
                        "t1, t1ce, t2, flair")
    schema = load_schema("samples")
    validator = jsonschema.Draft202012Validator(schema)
    seen = {}
    for idx, row in frame.iterrows():
        record = {k: _coerce(v) for k, v in row.items()
                  if k in schema["properties"] and k != "survival_days"}
        sid = record.get("subject")
        where = f"row {idx + 2} (subject {sid})"
        for err in validator.iter_errors(record):
            field = ".".join(map(str, err.absolute_path)) or "subject"
            problems.append(f"{where}, field {field}: {err.message}")
        if isinstance(sid, str) and sid in seen:
            problems.append(f"{where}: duplicate subject id {sid!r} (also row {seen[sid]})")
        elif isinstance(sid, str):
            seen[sid] = idx + 2
    return problems


def resolve_path(value, base: Path):
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return os.path.normpath(str(p if p.is_absolute() else Path(base) / p))


def parse_survival(value, subject=None):
    """Survival cell -> (days, event_or_None). 'ALIVE (361 days later)' is censored."""
    value = _coerce(value)
    if value is None:
        return None, None
    if isinstance(value, str):
        match = _ALIVE_RE.match(value)
        if not match:
            raise InputError(f"survival time {value!r} is neither a number nor "
                             "'ALIVE (N days later)'", subject=subject)
        days, event = float(match.group(1)), 0
    else:
        days, event = float(value), None
    if not np.isfinite(days) or days < 0:
        raise InputError(f"survival time {value!r} is negative or not finite",
                         subject=subject)
    return days, event


def demo_sheet_in_use(config) -> bool:
    """The samples sheet is the one the demo rules write."""
    demo = config.get("demo", {})
    sheet = config.get("samples")
    return bool(demo.get("enabled")) and sheet is not None and \
        Path(sheet) == demo_layout.sheet_path(demo["out_dir"])


def demo_sheet_pending(config) -> bool:
    return demo_sheet_in_use(config) and not Path(config["samples"]).exists()


def _demo_frame(config) -> pd.DataFrame:
    """Demo rows: subjects and paths from the layout (so changing demo.subjects
    takes effect before the sheet is rewritten), clinical columns from the
    sheet once the demo rules have written it."""
    rows = pd.DataFrame(demo_layout.expected_rows(config["demo"]["out_dir"],
                                                  config["demo"]["subjects"]))
    sheet = Path(config["samples"])
    if sheet.exists():
        written = read_table(sheet)
        clinical = [c for c in written.columns if c not in rows.columns]
        rows = rows.merge(written[["subject", *clinical]], on="subject", how="left")
    return rows


def load_samples(config) -> pd.DataFrame:
    """Samples as a frame with absolute-or-cwd-relative paths, checked.

    When the demo is enabled and its sheet is not written yet, the rows come
    from the demo layout (paths only), so a dry run works on a clean clone.
    """
    if config.get("brats_dir"):
        from .ingest.discover import discover_brats  # imported late: optional stage

        frame = discover_brats(config["brats_dir"], config.get("clinical"))
        base = Path(".")
    elif demo_sheet_in_use(config):
        frame = _demo_frame(config)
        base = Path(config["samples"]).parent
    elif config.get("samples"):
        frame = read_table(config["samples"])
        base = Path(config["samples"]).parent
    else:
        raise ConfigError("config: give 'samples' (a sheet) or 'brats_dir'")
    extra = set(config.get("survival", {}).get("covariates", []))
    extra |= {config.get("survival", {}).get("time", ""),
              config.get("survival", {}).get("event") or ""}
    problems = check_rows(frame, allowed_extra=extra)
    if problems:
        raise ConfigError("samples sheet: " + "; ".join(problems))
    frame = frame.copy()
    for col in PATH_COLUMNS:
        if col in frame.columns:
            frame[col] = [resolve_path(_coerce(v), base) for v in frame[col]]
    if "space" not in frame.columns:
        frame["space"] = "native"
    frame["space"] = frame["space"].fillna("native")
    return frame.set_index("subject", drop=False)


def effective_labels(config, samples: pd.DataFrame | None = None):
    """The label convention in force: config `labels`, where `auto` becomes the
    convention that every subject's t1ce and seg file names settle (see
    btpipe.ingest.discover.convention_for_case); ConfigError otherwise."""
    from .labels import AUTO

    labels = config.get("labels", "brats2021")
    if labels != AUTO:
        return labels
    from .ingest.discover import detect_convention  # imported late: optional stage

    samples = load_samples(config) if samples is None else samples
    paths = [value for column in ("t1ce", "seg") if column in samples.columns
             for value in samples[column] if isinstance(value, str) and value]
    return detect_convention(paths)


def subject_inputs(row) -> dict:
    """The path fields of one row (None where absent), for the ingest step."""
    out = {col: (row.get(col) if isinstance(row.get(col), str) else None)
           for col in PATH_COLUMNS}
    out["space"] = row.get("space") or "native"
    return out


def missing_files(row) -> list[str]:
    return [f"{col}={path}" for col, path in subject_inputs(row).items()
            if col != "space" and path and not Path(path).exists()]


def _columns_source(config) -> str:
    """Where the clinical columns come from, for messages."""
    if config.get("brats_dir"):
        from .ingest.discover import clinical_paths  # imported late: optional stage

        tables = clinical_paths(config.get("clinical"))
        return ", ".join(tables) if tables else \
            f"{config['brats_dir']} (no clinical table: set 'clinical')"
    return str(config.get("samples"))


def survival_problems(config, frame: pd.DataFrame) -> list[str]:
    """Configured survival columns (time, event, covariates, subset) absent from the sheet or
    clinical table, each named with the file; none while the demo sheet is still to be written."""
    surv = config.get("survival", {})
    if not surv.get("enabled", True) or demo_sheet_pending(config):
        return []
    wanted = [("survival.time", surv.get("time")), ("survival.event", surv.get("event"))]
    wanted += [("survival.covariates", c) for c in surv.get("covariates", [])]
    wanted += [("survival.subset", c) for c in surv.get("subset", {})]
    return [f"{key}: column {column!r} is not in {_columns_source(config)}"
            for key, column in wanted if column and column not in frame.columns]


def segmentation_problems(config, frame: pd.DataFrame) -> list[str]:
    """Subjects the segmentation mode cannot segment, named (provided labels, pretrained model)."""
    seg = config.get("segmentation", {})
    mode, model_path = seg.get("mode"), seg.get("model_path")
    if mode == "pretrained" and not model_path:
        return ["segmentation.mode is pretrained but segmentation.model_path is not set"]
    if mode == "train" and seg.get("unlabelled") == "final" and seg.get("final_model") is False:
        return ["segmentation.unlabelled is final but segmentation.final_model is false: "
                "set final_model true, or unlabelled ensemble"]
    has_labels = frame["seg"].notna() if "seg" in frame.columns else pd.Series(False, frame.index)
    if mode == "train" and not has_labels.any() and not demo_sheet_pending(config):
        return [f"segmentation.mode is train but none of the {len(frame)} subjects has expert labels "
                "(seg) to train on; give labels, or set mode pretrained with a model_path"]
    if mode != "provided" or model_path:
        return []
    unlabelled = sorted(frame.loc[~has_labels, "subject"].astype(str))
    if not unlabelled:
        return []
    shown = ", ".join(unlabelled[:10]) + (f" and {len(unlabelled) - 10} more" if len(unlabelled) > 10 else "")
    return [f"segmentation.mode is provided but {len(unlabelled)} subject(s) have no expert labels "
            f"(seg): {shown}; give their labels or set segmentation.model_path to segment them"]


def config_problems(config, frame: pd.DataFrame) -> list[str]:
    """Problems between the config and the subjects that stop a run before any job."""
    return survival_problems(config, frame) + segmentation_problems(config, frame)
