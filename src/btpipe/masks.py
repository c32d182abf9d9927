"""Comparing masks and label maps: shared by preprocessing QC and the segmentation scorers."""

from __future__ import annotations

import numpy as np

# BraTS: an empty reference with any predicted voxel (or the reverse) scores this HD95 (mm),
# the diagonal of the 240 x 240 x 155 box.
HD95_EMPTY = 373.13


def dice(a, b) -> float:
    """Dice overlap of two masks (non-zero = inside); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def crop_to_union(pred, ref, margin=1):
    """Crop both masks (or label maps) to the bounding box of their non-zero union
    plus `margin` voxels, clipped to the image (speed only)."""
    union = pred | ref
    coords = np.argwhere(union)
    lo = np.maximum(coords.min(0) - margin, 0)
    hi = np.minimum(coords.max(0) + 1 + margin, union.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return pred[box], ref[box]
