"""Synthetic demo cohort built from a real anatomical template (see generate.py)."""

from .layout import expected_rows, subject_ids  # noqa: F401
