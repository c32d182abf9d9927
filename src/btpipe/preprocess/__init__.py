"""Preprocessing (BraTS recipe): native scans -> SRI24 atlas grid, skull-stripped.

Public API: ``preprocess_subject``, ``labels_to_atlas``, ``labels_to_native``,
``cohort_qc``, ``fetch_atlas``, ``atlas_grid``, ``target_grid``.
"""

from .atlas import atlas_grid, fetch_atlas, target_grid
from .pipeline import labels_to_atlas, labels_to_native, load_sequences, preprocess_subject
from .qc import cohort_qc

__all__ = ["atlas_grid", "cohort_qc", "fetch_atlas", "labels_to_atlas",
           "labels_to_native", "load_sequences", "preprocess_subject", "target_grid"]
