"""The preprocessing stage's workflow steps: files in, files out (called by workflow/scripts)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .. import io
from ..errors import InputError
from ..labels import unexpected_values
from ..masks import dice
from .pipeline import labels_to_atlas
from .qc import cohort_qc


def qc_cohort_step(qc_paths, subjects, mask_paths, references: dict, out_path) -> pd.DataFrame:
    """cohort/qc.parquet, with the brain-mask Dice against a reference mask (e.g. the demo's
    truth) where one was given: ``mask_paths`` in ``subjects`` order, ``references``
    {subject: reference mask}."""
    frame = cohort_qc(qc_paths)
    dices = {s: dice(nib.load(mask).get_fdata(), nib.load(references[s]).get_fdata())
             for s, mask in zip(subjects, mask_paths) if s in references}
    frame["brain_mask_dice_reference"] = frame["subject"].map(dices).astype(float)
    io.write_parquet(out_path, frame)
    return frame


def reference_to_atlas_step(native_path, preproc_dir, out_path, labels=None, subject=None):
    """Expert labels / reference mask into atlas space (nearest neighbour).
    Atlas-space inputs have identity transforms, so this only regrids them.
    With `labels` (the convention of expert labels; None for a brain mask),
    values outside it are rejected before anything is written: InputError
    naming the subject (default: the folder above preproc_dir) and the file."""
    if labels is not None and Path(native_path).is_file():
        bad = unexpected_values(np.rint(np.asanyarray(nib.load(str(native_path)).dataobj)),
                                labels)
        if bad:
            raise InputError(f"expert labels hold values {bad} outside the label convention "
                             f"{labels!r} (config 'labels')",
                             subject=subject or Path(preproc_dir).parent.name, path=native_path)
    labels_to_atlas(native_path, preproc_dir, out_path)
