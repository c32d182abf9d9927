"""Ingest: DICOM folders or NIfTI files -> de-identified t1, t1ce, t2, flair.

Public API (what the workflow and the CLI call):

- `convert_dicom_dir(dicom_dir, out_dir, subject=None) -> DataFrame`
- `ingest_subject(subject, inputs, out_dir, rules_path, missing_sequence="fail") -> dict`
- `load_rules(path) -> dict`, `classify_series(table, rules) -> DataFrame`
- `discover_brats(brats_dir, clinical=None) -> DataFrame`
- `scrub_sidecar(meta, tokens=()) -> (dict, removed keys)`

See docs/ingest.md.
"""

from .classify import classify_series, load_rules
from .convert import SERIES_COLUMNS, convert_dicom_dir, dcm2niix_binary
from .deid import scrub_sidecar
from .discover import discover_brats
from .subject import ingest_subject

__all__ = ["SERIES_COLUMNS", "classify_series", "convert_dicom_dir", "dcm2niix_binary",
           "discover_brats", "ingest_subject", "load_rules", "scrub_sidecar"]
