"""Synthetic demo cohort built from a real anatomical template (see generate.py)."""

from .layout import expected_rows, subject_ids  # noqa: F401

# The generator pulls in scipy, pydicom and torch: exported lazily so that
# importing the layout (the DAG does, at parse time) stays cheap.
_LAZY = {"make_subject": "generate", "make_demo_cohort": "generate",
         "write_sheet": "generate", "PLANTED_PHI": "dicom",
         "TRUE_COEFFICIENTS": "clinical"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
