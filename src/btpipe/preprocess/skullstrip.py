"""Skull stripping with deepbet and the plausibility checks around it.

deepbet (a 3-D U-Net ensemble shipped inside its PyPI package, so nothing is
downloaded at run time) runs on CPU in a few seconds per volume. Its mask is
checked (volume in a plausible range, one dominant connected component); the
pipeline falls back to the atlas brain mask carried back through the
registration when the check fails.
"""

from __future__ import annotations

import numpy as np

_BET = None


def _extractor():
    """One deepbet model per process (loading it costs about a second)."""
    global _BET
    if _BET is None:
        import torch
        from deepbet import BrainExtraction

        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        _BET = BrainExtraction(no_gpu=True)
    return _BET


def deepbet_mask(img, threshold=0.5, seed=0):
    """Brain mask (nibabel uint8 image on ``img``'s grid) of a nibabel image.

    deepbet reorients to the closest canonical internally and maps the mask
    back to the input grid, so any orientation is fine.
    """
    import nibabel as nib
    import torch

    torch.manual_seed(seed)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    plain = nib.Nifti1Image(data, img.affine)
    _, mask, _ = _extractor().run(plain, threshold=threshold)
    arr = (np.asarray(mask.dataobj) > 0).astype(np.uint8)
    return nib.Nifti1Image(arr, img.affine)


def components(mask: np.ndarray):
    """(number of connected components, fraction of voxels in the largest)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask > 0)
    if n == 0:
        return 0, 0.0
    sizes = np.bincount(lab.ravel())[1:]
    return int(n), float(sizes.max() / sizes.sum())


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask > 0)
    if n <= 1:
        return (mask > 0).astype(np.uint8)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (lab == sizes.argmax()).astype(np.uint8)


def volume_ml(mask: np.ndarray, zooms) -> float:
    return float((mask > 0).sum() * np.prod(zooms[:3]) / 1000.0)


def plausibility(mask: np.ndarray, zooms, brain_volume_ml=(700, 2200),
                 min_dominant_fraction=0.95) -> list[str]:
    """Reasons why a brain mask is implausible (empty list when it is fine)."""
    problems = []
    vol = volume_ml(mask, zooms)
    lo, hi = brain_volume_ml
    if not lo <= vol <= hi:
        problems.append(f"brain volume {vol:.0f} ml outside [{lo}, {hi}]")
    n, frac = components(mask)
    if n == 0 or frac < min_dominant_fraction:
        problems.append(f"no dominant component ({n} components, largest {frac:.2f})")
    return problems


def rough_brain_mask(data: np.ndarray, spacing, erode_mm=8.0) -> np.ndarray:
    """A crude brain mask without a model: the fallback's starting point.

    Otsu head mask, eroded by ``erode_mm`` (cuts the thin skull/scalp bridges),
    largest component, grown back by the same distance inside the head mask.
    Only used to drive the registration that carries the atlas brain back.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    data = np.asarray(data, np.float32)
    head = data > threshold_otsu(data)
    head = ndimage.binary_fill_holes(head)
    core = ndimage.distance_transform_edt(head, sampling=spacing) > erode_mm
    core = largest_component(core).astype(bool)
    if not core.any():
        return head.astype(np.uint8)
    grown = ndimage.distance_transform_edt(~core, sampling=spacing) <= erode_mm
    return (grown & head).astype(np.uint8)
