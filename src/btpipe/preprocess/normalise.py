"""Intensity normalisation for the models: clip, then z-score inside the brain."""

from __future__ import annotations

import numpy as np


def zscore_in_mask(data: np.ndarray, mask: np.ndarray, clip_percentiles=(0.5, 99.5)) -> np.ndarray:
    """Clip to percentiles computed inside the brain, z-score there, zero outside.

    Inputs: an image array and a brain mask of the same shape. Output: float32
    array, mean 0 and standard deviation 1 over the brain (after clipping), 0
    outside. A constant image inside the brain gives zeros.
    """
    data = np.asarray(data, dtype=np.float64)
    inside = np.asarray(mask) > 0
    out = np.zeros(data.shape, np.float32)
    if not inside.any():
        return out
    vals = data[inside]
    lo, hi = np.percentile(vals, clip_percentiles)
    vals = np.clip(vals, lo, hi)
    sd = vals.std()
    if sd > 0:
        out[inside] = ((vals - vals.mean()) / sd).astype(np.float32)
    return out
