"""Slice bags for the deep survival models: read, check and resize ``subjects/{s}/slices.npz``.

A bag (written by :mod:`btpipe.features.slices`) holds ``images`` float16 [n, C, S, S]
(channels t1, t1ce, t2, flair), ``plane`` (0 sagittal, 1 coronal, 2 axial), ``slice_index``,
``tumour_area``, ``is_anchor`` and more (``coverage``, ``K``, ``empty_tumour``...).
:class:`SliceBag` keeps what the models need, as float32 resized to the model's side.

``relative_position`` of a slice = its position inside its plane's window divided by the number
of slices of that window (0 for the first slice; METHODS B: slice index / number of slices).

:func:`write_synthetic_cohort` writes small bags whose tumour brightness drives survival: the
test and timing cohort for the bag models (no real images with outcomes ship with btpipe).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

PLANES = ("sagittal", "coronal", "axial")
REQUIRED_KEYS = ("images", "plane", "slice_index", "tumour_area", "is_anchor")


@dataclass
class SliceBag:
    """One subject's slices: ``images`` float32 [n, C, S, S] and per-slice metadata [n]."""

    subject: str
    images: np.ndarray
    plane: np.ndarray
    slice_index: np.ndarray
    tumour_area: np.ndarray
    is_anchor: np.ndarray

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def relative_position(self) -> np.ndarray:
        """Position of each slice inside its plane's window / the window's number of slices."""
        out = np.zeros(self.n, dtype=float)
        for p in np.unique(self.plane):
            rows = np.nonzero(self.plane == p)[0]
            order = rows[np.argsort(self.slice_index[rows], kind="stable")]
            out[order] = np.arange(order.size) / order.size
        return out

    def anchor_positions(self) -> np.ndarray:
        """Row of each plane's anchor (sagittal, coronal, axial); -1 for a plane without slices.

        A plane whose anchor flag is missing uses its slice with the largest tumour area.
        """
        out = np.full(3, -1, dtype=int)
        for p in range(3):
            rows = np.nonzero(self.plane == p)[0]
            if rows.size == 0:
                continue
            flagged = rows[self.is_anchor[rows]]
            out[p] = int(flagged[0]) if flagged.size else int(rows[np.argmax(self.tumour_area[rows])])
        return out


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """[n, C, S, S] -> [n, C, size, size] float32 (bilinear, anti-aliased when shrinking)."""
    images = np.asarray(images, dtype=np.float32)
    if size is None or int(size) == images.shape[-1] == images.shape[-2]:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images))
    shrink = int(size) < max(images.shape[-2:])
    y = F.interpolate(x, size=(int(size), int(size)), mode="bilinear", align_corners=False,
                      antialias=shrink)
    return y.numpy()


def read_bag(path, subject=None, size=None, channels=None) -> SliceBag:
    """Read one ``slices.npz`` as a :class:`SliceBag`.

    ``size``: resize slices to size x size (None keeps the stored side); ``channels``: indices of
    the channels to keep (None keeps all). Raises InputError naming subject and file when the
    file is missing, unreadable or breaks the bag contract.
    """
    path = Path(path)
    subject = str(subject) if subject is not None else path.parent.name
    if not path.exists():
        raise InputError("slice bag not found", subject=subject, path=path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k in REQUIRED_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"slice bag unreadable: {exc}", subject=subject, path=path) from exc
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InputError(f"slice bag lacks {missing}", subject=subject, path=path)
    images = arrays["images"]
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"slice bag images must be [n>0, C, S, S], got {images.shape}",
                         subject=subject, path=path)
    n = images.shape[0]
    meta = {k: np.asarray(arrays[k]).reshape(-1) for k in REQUIRED_KEYS[1:]}
    if any(v.size != n for v in meta.values()):
        raise InputError("slice bag metadata lengths differ from the number of slices",
                         subject=subject, path=path)
    if not np.isin(meta["plane"], (0, 1, 2)).all():
        raise InputError("slice bag plane values must be 0, 1 or 2", subject=subject, path=path)
    if channels is not None:
        if max(channels) >= images.shape[1]:
            raise InputError(f"slice bag has {images.shape[1]} channels, model wants {list(channels)}",
                             subject=subject, path=path)
        images = images[:, list(channels)]
    images = resize_images(images, size)
    if not np.isfinite(images).all():
        raise InputError("slice bag images hold NaN or infinite values", subject=subject, path=path)
    return SliceBag(subject, images, meta["plane"].astype(int), meta["slice_index"].astype(int),
                    meta["tumour_area"].astype(float), meta["is_anchor"].astype(bool))


def load_bags(bag_paths: dict, subjects, size=None, channels=None) -> dict[str, SliceBag]:
    """{subject: SliceBag} for ``subjects`` from ``bag_paths`` {subject: path}.

    A subject without a path is an InputError naming it; every bag must have the same channels.
    """
    bags = {}
    for s in map(str, subjects):
        if s not in bag_paths:
            raise InputError("no slice bag path given for subject", subject=s)
        bags[s] = read_bag(bag_paths[s], s, size, channels)
    counts = {b.channels for b in bags.values()}
    if len(counts) > 1:
        raise InputError(f"slice bags have different channel counts {sorted(counts)}")
    return bags


# ---------------------------------------------------------------- synthetic cohort


def synthetic_bag(rng, brightness: float, size=32, per_plane=3, channels=4) -> dict:
    """One bag (arrays as :func:`btpipe.features.slices.build_slice_bag` writes them) with a
    bright disc whose intensity is ``brightness`` on a noisy background; the disc shrinks
    away from each plane's anchor (largest area at the anchor)."""
    yy, xx = np.mgrid[:size, :size]
    images, plane, index, area, anchor = [], [], [], [], []
    centre_pos = per_plane // 2
    for p in range(3):
        for k in range(per_plane):
            radius = size * (0.3 - 0.06 * abs(k - centre_pos)) * rng.uniform(0.85, 1.15)
            cy, cx = size / 2 + rng.normal(0, size * 0.05, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
            img = rng.normal(0.0, 0.3, (channels, size, size))
            img[:, disc] += brightness
            images.append(img)
            plane.append(p)
            index.append(60 + k)
            area.append(int(disc.sum()))
            anchor.append(k == centre_pos)
    n = len(plane)
    return {"images": np.asarray(images, np.float16), "plane": np.asarray(plane, np.int8),
            "slice_index": np.asarray(index, np.int16), "tumour_area": np.asarray(area, np.int32),
            "is_anchor": np.asarray(anchor, bool), "coverage": np.ones(3, np.float32),
            "K": np.int32(n), "n_slices": np.int32(n), "empty_tumour": np.int8(0)}


def write_synthetic_cohort(out_dir, n_subjects=8, size=32, per_plane=3, seed=0, censor_fraction=0.2):
    """Write ``{out_dir}/{subject}/slices.npz`` for a cohort where a brighter tumour means a
    shorter survival (exponential times, log-hazard = 1.5 * brightness signal).

    Returns (bag_paths {subject: path}, y structured (event, time), ids array, signal array).
    """
    from ..io import savez_compressed
    from .data import make_y

    rng = np.random.default_rng(seed)
    signal = rng.normal(0.0, 1.0, n_subjects)
    time = rng.exponential(400.0 * np.exp(-1.5 * signal))
    time = np.maximum(np.round(time), 1.0)
    event = rng.random(n_subjects) >= censor_fraction
    event[:2] = True  # every cohort has events
    ids = np.asarray([f"S{i:03d}" for i in range(n_subjects)])
    paths = {}
    for s, z in zip(ids, signal):
        path = Path(out_dir) / s / "slices.npz"
        savez_compressed(path, **synthetic_bag(rng, 1.0 + 0.5 * z, size, per_plane))
        paths[str(s)] = path
    return paths, make_y(event, time), ids, signal
