"""Loading subjects and MONAI transforms for segmentation training and inference.

An *item* is a dict {"subject": id, "image": [t1, t1ce, t2, flair paths],
"label": reference label path (optional for inference)}. Images of one
subject must share one grid (same shape and affine): they come from the
preprocessing stage in atlas space.

Randomness: the random transforms are MONAI ``Randomizable`` objects whose
state is set from (seed, step, slot) before every draw (`sample_seed`), so a
batch depends only on the run seed and the step number. That is what makes a
resumed training run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.transforms.transform import Transform

from .. import labels as lab
from ..errors import InputError

IMAGE_KEYS = ("image", "label")


def sample_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (run seed, step, slot, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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


class LoadSubjectd(Transform):
    """Deterministic (cacheable) MONAI-style dict transform: paths -> arrays.

    Input {"subject", "image": [paths], "label": path}; output {"subject",
    "image": float32 [C, X, Y, Z] (optionally normalised), "label": float32
    regions [3, X, Y, Z]}.
    """

    def __init__(self, labels="brats2021", normalize=True):
        self.labels = labels
        self.normalize = normalize

    def __call__(self, item):
        subject = item.get("subject")
        image, ref_img = load_images(item["image"], subject)
        out = {"subject": subject, "image": normalize_channels(image) if self.normalize else image}
        if item.get("label") is not None:
            out["label"] = load_label_regions(item["label"], self.labels, ref_img, subject)
        return out


def train_transforms(roi_size, labels="brats2021", normalize=True, pos_fraction=2 / 3):
    """Compose: load, pad, crop-centre candidates (cached) -> tumour-oversampled crop -> flips,
    affine, intensity.

    pos_fraction: share of patches centred on a tumour voxel (pos/neg ratio
    of RandCropByPosNegLabeld); the rest are centred in brain background.
    The candidate centres (tumour voxels, brain background voxels) are found
    once per subject: searching the whole volume on every draw took about a
    tenth of a CPU training step.
    """
    from monai.transforms import (
        Compose, EnsureTyped, FgBgToIndicesd, RandAffined, RandCropByPosNegLabeld, RandFlipd,
        RandScaleIntensityd, RandShiftIntensityd, SpatialPadd,
    )
    roi = [int(r) for r in roi_size]
    # CacheDataset caches everything before the first random transform.
    return Compose([
        LoadSubjectd(labels, normalize),
        SpatialPadd(keys=IMAGE_KEYS, spatial_size=roi),
        FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
        RandCropByPosNegLabeld(keys=IMAGE_KEYS, label_key="label", spatial_size=roi,
                               pos=pos_fraction, neg=1 - pos_fraction, num_samples=1,
                               fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices"),
        RandFlipd(keys=IMAGE_KEYS, prob=0.5, spatial_axis=0),
        RandFlipd(keys=IMAGE_KEYS, prob=0.5, spatial_axis=1),
        RandFlipd(keys=IMAGE_KEYS, prob=0.5, spatial_axis=2),
        RandAffined(keys=IMAGE_KEYS, prob=0.2, rotate_range=[0.26, 0.26, 0.26], scale_range=[0.1, 0.1, 0.1],
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        EnsureTyped(keys=IMAGE_KEYS, dtype=torch.float32, track_meta=False),
    ])


def make_train_dataset(items, roi_size, labels="brats2021", normalize=True, cache_rate=1.0):
    """A MONAI CacheDataset over training items (loading cached, augmentation per draw).

    copy_cache=False: the random transforms return new arrays (a crop, then
    flips, affine and intensity changes that copy), so the cached volumes are
    never written to and need no deep copy per draw (tested).
    """
    from monai.data import CacheDataset

    return CacheDataset(data=list(items), transform=train_transforms(roi_size, labels, normalize),
                        cache_rate=float(cache_rate), num_workers=0, progress=False, copy_cache=False)


def draw_sample(dataset, index: int, seed: int) -> dict:
    """One augmented patch of item `index`, with all randomness fixed by `seed`."""
    dataset.transform.set_random_state(seed=seed)
    out = dataset[index]
    return out[0] if isinstance(out, list) else out


def stream_index(position: int, n_items: int, seed: int) -> tuple[int, int]:
    """Item index and epoch for the position-th draw of an endless epoch stream.

    Each epoch is a permutation of the items seeded by (seed, epoch); the
    stream concatenates epochs, so its k-th element is a pure function of k.
    """
    epoch, offset = divmod(int(position), int(n_items))
    perm = np.random.default_rng(sample_seed(seed, epoch, 7)).permutation(n_items)
    return int(perm[offset]), epoch


def make_batch(dataset, step: int, batch_size: int, seed: int):
    """Batch for optimiser step `step` (1-based) -> (images [B,C,...], labels [B,3,...], epoch)."""
    images, targets, epoch = [], [], 0
    for slot in range(batch_size):
        position = (step - 1) * batch_size + slot
        index, epoch = stream_index(position, len(dataset), seed)
        sample = draw_sample(dataset, index, sample_seed(seed, step, slot))
        images.append(torch.as_tensor(sample["image"]))
        targets.append(torch.as_tensor(sample["label"]))
    return torch.stack(images), torch.stack(targets), epoch
