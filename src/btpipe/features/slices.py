"""Anchor-slice bags: tumour-centred 2-D slices in three planes for slice-based survival models.

Planes are the array axes of the atlas-space image (read with SimpleITK, index order [x, y, z]):
plane 0 = sagittal (slices along axis 0, x), 1 = coronal (axis 1, y), 2 = axial (axis 2, z).
A slice of plane p is the 2-D array with the other two axes in order (sagittal [y, z],
coronal [x, z], axial [x, y]). Any flips of the axes are kept as stored; only the axis order
must be x, y, z (true for every atlas-space image btpipe writes), else InputError.

Per plane the *anchor* is the slice with the largest tumour (WT) area (the first one on ties);
the bag takes ``before[p]`` slices before and ``after[p]`` after it. At a volume edge the window
slides inward so every plane keeps ``before + after + 1`` slices (the anchor is then off-centre;
``is_anchor`` marks it); only when an axis is shorter than that are all its slices taken.
K = sum(before) + sum(after) + 3.

Crop: one square box per plane, the bounding box of the tumour over all the plane's selected
slices (so neighbouring slices share one scale and position), enlarged by ``margin`` times its
side on each side and made square around its centre; parts outside the volume are zero. Every
sequence is cropped with that box and resized (bilinear, anti-aliased) to ``size`` x ``size``.

Coverage of a plane = tumour voxels inside the plane's selected slices / all tumour voxels;
``coverage_mean`` is the mean over the three planes.

No tumour: the anchors are the slices through the brain centre (centroid of the brain mask, or of
the images' non-zero voxels), the box is the brain's bounding box in each plane, tumour areas are
0, coverage is NaN and ``empty_tumour`` = 1.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .. import SEQUENCES
from ..errors import ConfigError, InputError
from ..io import savez_compressed
from . import shape as shape_mod

PLANES = ("sagittal", "coronal", "axial")
DEFAULT_KS = (8, 16, 24, 32, 40, 48, 64, 72, 80, 96)
MIN_BOX = 8  # voxels: the smallest crop side, so a tiny lesion is not blown up to pixel soup


def _other_axes(axis: int) -> tuple[int, int]:
    return tuple(a for a in range(3) if a != axis)


def plane_areas(mask) -> list[np.ndarray]:
    """Tumour area (voxels) of every slice, per plane (array axes 0, 1, 2)."""
    mask = np.asarray(mask, bool)
    return [mask.sum(axis=_other_axes(axis)) for axis in range(3)]


def slice_window(anchor: int, before: int, after: int, length: int) -> tuple[int, int]:
    """[start, stop) of the slices [anchor - before, anchor + after], slid inward at the edges."""
    if before < 0 or after < 0:
        raise ConfigError(f"slices: before/after must be >= 0, got {before}/{after}")
    width = before + after + 1
    if width >= length:
        return 0, length
    start = min(max(anchor - before, 0), length - width)
    return start, start + width


def split_k(K: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Symmetric split of K - 3 neighbours over the planes: (before, after) per plane.

    Each plane gets (K - 3) // 3 neighbours, the remainder going to sagittal then coronal; within
    a plane ``before = n // 2`` and ``after = n - before`` (K = 8: before 1,1,0, after 1,1,1).
    """
    if K < 3:
        raise ConfigError(f"slices: K must be >= 3 (one anchor per plane), got {K}")
    base, rest = divmod(K - 3, 3)
    per_plane = [base + (1 if p < rest else 0) for p in range(3)]
    before = tuple(n // 2 for n in per_plane)
    after = tuple(n - b for n, b in zip(per_plane, before))
    return before, after


def _check_axes(volume: shape_mod.Volume, subject, path):
    order = np.argmax(np.abs(volume.direction), axis=0)
    if tuple(order) != (0, 1, 2):
        raise InputError("slices: image axes are not in x, y, z order (not an atlas-space image?)",
                         subject, path)


def _square_box(lo, hi, margin) -> tuple[int, int, int, int]:
    """Square box (r0, r1, c0, c1), half-open, around [lo, hi] (inclusive) with a margin."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    side = max(float(np.max(hi - lo + 1)), MIN_BOX)
    side = int(np.ceil(side * (1 + 2 * margin)))
    centre = (lo + hi + 1) / 2
    start = np.floor(centre - side / 2).astype(int)
    return int(start[0]), int(start[0] + side), int(start[1]), int(start[1] + side)


def _crop(slice2d, box) -> np.ndarray:
    """Crop a 2-D array with a box that may reach outside it (zero fill)."""
    r0, r1, c0, c1 = box
    out = np.zeros((r1 - r0, c1 - c0), np.float32)
    rs, re = max(r0, 0), min(r1, slice2d.shape[0])
    cs, ce = max(c0, 0), min(c1, slice2d.shape[1])
    if rs < re and cs < ce:
        out[rs - r0:re - r0, cs - c0:ce - c0] = slice2d[rs:re, cs:ce]
    return out


def _resize(image2d, size) -> np.ndarray:
    from skimage.transform import resize

    downsampling = max(image2d.shape) > size
    return resize(image2d, (size, size), order=1, preserve_range=True,
                  anti_aliasing=downsampling, mode="constant").astype(np.float32)


def _take(volume, axis, index) -> np.ndarray:
    """Slice `index` along `axis` as a view (np.take copies the whole volume: 100x slower)."""
    return volume[(slice(None),) * axis + (index,)]


def _slab(volume, axis, start, stop) -> np.ndarray:
    return volume[(slice(None),) * axis + (slice(start, stop),)]


def _centroid_index(mask) -> np.ndarray:
    return np.rint(np.argwhere(mask).mean(axis=0)).astype(int)


def build_slice_bag(images, seg_path, labels="brats2021", before=(2, 2, 2), after=(2, 2, 2),
                    size=224, margin=0.1, sequences=None, brain_mask_path=None, subject=None) -> dict:
    """Build the anchor-slice bag of one subject (see the module doc for the conventions).

    Inputs: ``images`` {sequence: path} on the segmentation grid, ``seg_path`` (label map in
    convention ``labels``), neighbours ``before``/``after`` per plane, output side ``size``,
    crop ``margin`` (fraction of the box side), ``sequences`` (channel order; default the
    btpipe sequences present in ``images``).
    Output dict of arrays: ``images`` [n, C, size, size] float16, ``plane`` (0/1/2), ``slice_index``,
    ``tumour_area`` (voxels in the whole slice), ``is_anchor``, ``box`` [n, 4] (r0, r1, c0, c1 in
    slice coordinates, may reach outside), ``coverage`` [3] (sagittal, coronal, axial),
    ``coverage_mean``, ``K``, ``n_slices``, ``before``, ``after``, ``sequences``, ``empty_tumour``,
    ``size``, ``margin``.
    """
    before, after = tuple(int(b) for b in before), tuple(int(a) for a in after)
    if len(before) != 3 or len(after) != 3:
        raise ConfigError("slices: before and after need one value per plane (sagittal, coronal, axial)")
    if sequences is None:
        sequences = [s for s in SEQUENCES if s in images] or sorted(images)
    missing = [s for s in sequences if s not in images]
    if missing:
        raise InputError(f"slices: no image for sequence(s) {missing}", subject)
    label_map, seg = shape_mod.read_label_map(seg_path, subject)
    _check_axes(seg, subject, seg_path)
    volumes = []
    for seq in sequences:
        vol = shape_mod.read_volume(images[seq], subject, f"{seq} image")
        shape_mod.check_same_grid(seg, vol, subject, images[seq], f"{seq} image")
        volumes.append(vol.data.astype(np.float32, copy=False))
    tumour = shape_mod.region_masks(label_map, labels, ("WT",))["WT"]
    empty = not tumour.any()
    if empty:
        if brain_mask_path is not None:
            brain_vol = shape_mod.read_volume(brain_mask_path, subject, "brain mask")
            shape_mod.check_same_grid(seg, brain_vol, subject, brain_mask_path, "brain mask")
            target = brain_vol.data > 0
        else:
            target = np.any([v != 0 for v in volumes], axis=0)
        if not target.any():
            raise InputError("slices: no tumour and no brain voxels to centre the bag on", subject, seg_path)
        anchors = _centroid_index(target)
    else:
        target = tumour
        anchors = [int(np.argmax(a)) for a in plane_areas(tumour)]
    areas = plane_areas(tumour)
    total = float(tumour.sum())

    out = {k: [] for k in ("images", "plane", "slice_index", "tumour_area", "is_anchor", "box")}
    coverage = []
    for axis in range(3):
        start, stop = slice_window(anchors[axis], before[axis], after[axis], label_map.shape[axis])
        # Bounding box of the target (tumour, or brain if no tumour) over the selected slices.
        sub = _slab(target, axis, start, stop).any(axis=axis)
        idx = np.argwhere(sub)
        box = _square_box(idx.min(axis=0), idx.max(axis=0), margin)
        for index in range(start, stop):
            channels = [_resize(_crop(_take(v, axis, index), box), size) for v in volumes]
            out["images"].append(np.stack(channels))
            out["plane"].append(axis)
            out["slice_index"].append(index)
            out["tumour_area"].append(int(areas[axis][index]))
            out["is_anchor"].append(index == anchors[axis])
            out["box"].append(box)
        coverage.append(float(areas[axis][start:stop].sum()) / total if not empty else np.nan)
    return {
        "images": np.asarray(out["images"], dtype=np.float16).reshape(-1, len(sequences), size, size),
        "plane": np.asarray(out["plane"], np.int8),
        "slice_index": np.asarray(out["slice_index"], np.int16),
        "tumour_area": np.asarray(out["tumour_area"], np.int32),
        "is_anchor": np.asarray(out["is_anchor"], bool),
        "box": np.asarray(out["box"], np.int32).reshape(-1, 4),
        "coverage": np.asarray(coverage, np.float32),
        "coverage_mean": np.float32(np.mean(coverage)) if not empty else np.float32(np.nan),
        "K": np.int32(sum(before) + sum(after) + 3),
        "n_slices": np.int32(len(out["plane"])),
        "before": np.asarray(before, np.int16),
        "after": np.asarray(after, np.int16),
        "sequences": np.asarray(list(sequences), dtype=str),
        "empty_tumour": np.int8(empty),
        "size": np.int32(size),
        "margin": np.float32(margin),
    }


def save_slice_bag(path, bag: dict) -> int:
    """Write a bag with btpipe.io.savez_compressed (atomic); return the file size in bytes."""
    if bag["images"].dtype != np.float16:
        raise ValueError("slice bag images must be float16")
    savez_compressed(path, **bag)
    return os.path.getsize(path)


def load_slice_bag(path) -> dict:
    """Read a bag written by :func:`save_slice_bag` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def coverage_curve(seg_path, labels="brats2021", ks=DEFAULT_KS, subject=None) -> pd.DataFrame:
    """Coverage against K for one subject (K - 3 neighbours split by :func:`split_k`).

    Output columns: ``K``, ``plane`` (sagittal/coronal/axial/mean), ``before``, ``after``,
    ``coverage`` (NaN without tumour). The windows are those :func:`build_slice_bag` uses.
    """
    label_map, _ = shape_mod.read_label_map(seg_path, subject)
    tumour = shape_mod.region_masks(label_map, labels, ("WT",))["WT"]
    areas = plane_areas(tumour)
    total = float(tumour.sum())
    anchors = [int(np.argmax(a)) for a in areas]
    rows = []
    for K in ks:
        before, after = split_k(int(K))
        values = []
        for axis, plane in enumerate(PLANES):
            start, stop = slice_window(anchors[axis], before[axis], after[axis], label_map.shape[axis])
            value = float(areas[axis][start:stop].sum()) / total if total else np.nan
            values.append(value)
            rows.append({"K": int(K), "plane": plane, "before": before[axis], "after": after[axis],
                         "coverage": value})
        rows.append({"K": int(K), "plane": "mean", "before": sum(before), "after": sum(after),
                     "coverage": float(np.mean(values))})
    return pd.DataFrame(rows)
