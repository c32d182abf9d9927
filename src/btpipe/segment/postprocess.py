"""Post-processing of predicted segmentations: small tumour islands, the ET small-volume rule.

BraTS winners (nnU-Net 2020/2021) relabel enhancing tumour as necrosis when
the total predicted ET volume is below a threshold: a case without
enhancement scores ET Dice 1 only if nothing is predicted, so a few false ET
voxels cost a whole case. The threshold is chosen on out-of-fold predictions
with `propose_et_threshold`.
"""

from __future__ import annotations

import numpy as np

from .. import labels as lab


def drop_small_components(regions, min_fraction=0.0):
    """Regions [3, ...] (WT, TC, ET; booleans) without the small whole-tumour islands.

    Whole-tumour components (26-connected) smaller than ``min_fraction`` of
    the largest one are removed together with the core and enhancing voxels
    inside them (nnU-Net's connected-component post-processing, softened so
    that a second lesion of comparable size stays). ``min_fraction <= 0``
    changes nothing. Returns (regions, number of components removed).
    """
    from scipy import ndimage

    regions = np.asarray(regions, bool)
    if not min_fraction or min_fraction <= 0 or not regions[0].any():
        return regions.copy(), 0
    components, _ = ndimage.label(regions[0], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel())[1:]
    small = np.flatnonzero(sizes < float(min_fraction) * sizes.max()) + 1
    if small.size == 0:
        return regions.copy(), 0
    keep = ~np.isin(components, small)
    return regions & keep[None], int(small.size)


def et_volume_mm3(label_map, labels="brats2021", voxel_mm3=1.0) -> float:
    return float(lab.region_mask(label_map, "ET", labels).sum()) * float(voxel_mm3)


def relabel_small_et(label_map, labels="brats2021", min_volume_mm3=0.0, voxel_mm3=1.0):
    """Return (label map, relabelled?): ET becomes NCR when total ET < min_volume_mm3.

    The label map is not modified in place. With min_volume_mm3 <= 0 nothing changes.
    """
    label_map = np.asarray(label_map)
    if min_volume_mm3 is None or min_volume_mm3 <= 0:
        return label_map.copy(), False
    volume = et_volume_mm3(label_map, labels, voxel_mm3)
    if volume == 0 or volume >= min_volume_mm3:
        return label_map.copy(), False
    conv = lab.resolve_convention(labels)
    by_name = {name: value for value, name in conv.items()}
    core_value = by_name.get("NCR", by_name.get("NET"))
    out = label_map.copy()
    out[lab.region_mask(label_map, "ET", labels)] = core_value
    return out, True


def propose_et_threshold(pred_paths, ref_paths, labels="brats2021", candidates=(0, 100, 200, 300, 500, 750),
                         ref_labels=None) -> dict:
    """Pick the ET volume threshold (mm3) maximising mean ET Dice over cases.

    pred_paths / ref_paths: parallel lists of out-of-fold predicted and
    reference label NIfTI files (same grids). Ties go to the smaller
    threshold (the least intrusive). Returns {"threshold": best,
    "mean_et_dice": {threshold: mean Dice}, "n_cases": n}.
    """
    from .metrics import load_label_map, dice

    pred_paths, ref_paths = list(pred_paths), list(ref_paths)
    if len(pred_paths) != len(ref_paths) or not pred_paths:
        raise ValueError("propose_et_threshold needs equally many (>0) predictions and references")
    ref_labels = labels if ref_labels is None else ref_labels
    candidates = sorted(float(c) for c in candidates)
    totals = dict.fromkeys(candidates, 0.0)
    for pred_path, ref_path in zip(pred_paths, ref_paths):
        pred, spacing, _ = load_label_map(pred_path, "prediction")
        ref, _, _ = load_label_map(ref_path, "reference")
        voxel = float(np.prod(spacing))
        ref_et = lab.region_mask(ref, "ET", ref_labels)
        for c in candidates:
            relabelled, _ = relabel_small_et(pred, labels, c, voxel)
            totals[c] += dice(lab.region_mask(relabelled, "ET", labels), ref_et)
    means = {c: totals[c] / len(pred_paths) for c in candidates}
    best = max(candidates, key=lambda c: (means[c], -c))
    return {"threshold": best, "mean_et_dice": means, "n_cases": len(pred_paths)}
