"""Loading subjects for segmentation training and inference.

An *item* is a dict {"subject": id, "image": [t1, t1ce, t2, flair paths],
"label": reference label path (optional for inference)}. Images of one
subject must share one grid (same shape and affine): they come from the
preprocessing stage in atlas space. Training reads them through the compact
on-disk cache of :mod:`btpipe.segment.patches`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import labels as lab
from ..errors import InputError


def _load_nifti(path, subject, what):
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", subject=subject, path=path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"cannot read {what}: {exc}", subject=subject, path=path) from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{what} must be 3-D, got shape {data.shape}", subject=subject, path=path)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{what} holds NaN or infinite values", subject=subject, path=path)
    return data, img


def load_images(image_paths, subject=None):
    """Stack the channel images -> (float32 [C, X, Y, Z], reference nibabel image).

    Raises InputError (naming subject and file) when a file is missing,
    unreadable, not 3-D, or on another grid than the first channel.
    """
    if not image_paths:
        raise InputError("no input images given", subject=subject)
    arrays, ref_img = [], None
    for path in image_paths:
        data, img = _load_nifti(path, subject, "image")
        if ref_img is None:
            ref_img, ref_path = img, path
        elif data.shape != arrays[0].shape or not np.allclose(img.affine, ref_img.affine, atol=1e-3):
            raise InputError(f"image grid {data.shape} differs from {ref_path} {arrays[0].shape} "
                             "(all channels must share one grid)", subject=subject, path=path)
        arrays.append(data)
    return np.stack(arrays), ref_img


def load_label_regions(label_path, labels, ref_img, subject=None) -> np.ndarray:
    """Reference label map -> float32 regions [3, X, Y, Z] (WT, TC, ET) on the image grid."""
    data, img = _load_nifti(label_path, subject, "label")
    if data.shape != ref_img.shape[:3] or not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        raise InputError(f"label grid {data.shape} differs from the image grid {ref_img.shape[:3]}",
                         subject=subject, path=label_path)
    values = np.rint(data).astype(np.int16)
    bad = lab.unexpected_values(values, labels)
    if bad:
        raise InputError(f"label values {bad} are not in convention {labels!r}",
                         subject=subject, path=label_path)
    return lab.labels_to_regions(values, labels).astype(np.float32)


def normalize_channels(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-score over non-zero voxels (MONAI NormalizeIntensity(nonzero, channel_wise)).

    Applied at training and inference alike (stored as "normalize" in
    model.pt): it is nearly idempotent on images the preprocessing already
    normalised and it matches what the MONAI BraTS bundle expects.
    """
    out = np.zeros_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        ch = image[c]
        mask = ch != 0
        if not mask.any():
            continue
        values = ch[mask]
        std = values.std()
        out[c][mask] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out
