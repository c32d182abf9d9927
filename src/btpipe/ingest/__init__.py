"""Ingest: DICOM folders or NIfTI files -> de-identified t1, t1ce, t2, flair.

Public API (what the workflow and the CLI call):

- `convert_dicom_dir(dicom_dir, out_dir, subject=None) -> DataFrame`
- `ingest_subject(subject, inputs, out_dir, rules_path, missing_sequence="fail") -> dict`
- `load_rules(path) -> dict`, `classify_series(table, rules) -> DataFrame`
- `discover_brats(brats_dir, clinical=None) -> DataFrame`
- `scrub_sidecar(meta, tokens=()) -> (dict, removed keys)`

See docs/ingest.md.
"""

import importlib

# Loaded on first use (PEP 562): `btpipe convert` imports the light
# dcm2niix_process module and starts the converter before pandas and friends load.
_WHERE = {"classify_series": "classify", "load_rules": "classify",
          "SERIES_COLUMNS": "convert", "convert_dicom_dir": "convert",
          "dcm2niix_binary": "dcm2niix_process", "scrub_sidecar": "deid",
          "discover_brats": "discover", "ingest_subject": "subject"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__():
    return __all__
