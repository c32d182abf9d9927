"""The ingest stage's workflow steps: files in, files out (called by workflow/scripts)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from .. import io
from ..errors import InputError

log = logging.getLogger("btpipe")


def ingest_step(subject, inputs, out_dir, rules_path, missing_sequence="fail") -> dict:
    """Ingest one subject; bad input is recorded in ingest.json (status failed,
    error naming subject and file) instead of stopping the whole run."""
    from . import ingest_subject

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = ingest_subject(subject, inputs, out_dir, rules_path,
                                missing_sequence=missing_sequence)
        record = {"subject": subject, "status": "ok", "error": None, **report}
    except InputError as exc:
        log.error("ingest failed: %s", exc)
        # Drop whatever this attempt left so downstream never sees half a subject.
        for child in out_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        record = {"subject": subject, "status": "failed", "error": str(exc),
                  "file": exc.path}
    io.write_json(out_dir / "ingest.json", record)
    return record


def summary_step(nifti_dirs, subjects, out_path) -> pd.DataFrame:
    """cohort/ingest.parquet: one row per subject, status, error, file and warnings."""
    rows = []
    for subject, folder in zip(subjects, nifti_dirs):
        rec = io.read_json(Path(folder) / "ingest.json")
        rows.append({"subject": subject, "status": rec.get("status"),
                     "error": rec.get("error"), "file": rec.get("file"),
                     "warnings": "; ".join(map(str, rec.get("warnings", []) or []))})
    frame = pd.DataFrame(rows, columns=["subject", "status", "error", "file", "warnings"])
    io.write_parquet(out_path, frame)
    return frame
