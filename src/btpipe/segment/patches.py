"""Training inputs read from disk, one subject at a time: memory bounded by the patch.

Each training or monitoring subject is written once into a compact cache
folder (``cache_dir/{subject}-{key}``):

* ``image.npy``: the normalised channels [C, X, Y, Z] cropped to the box that
  holds every non-zero voxel of any channel and every tumour voxel, float16
  (float32 when images are not normalised: raw intensities may not fit);
* ``regions.npy``: uint8 [X, Y, Z] bit flags, 1 = WT, 2 = TC, 4 = ET,
  8 = brain (any channel non-zero), on the same crop;
* ``meta.json``: subject, crop box, full shape, key.

The key digests the input files (path, size, modification time), the label
convention and the normalisation, so a changed input gets a new folder and a
stale one is never read. Cropping keeps every non-zero voxel, so the
per-channel z-score over non-zero voxels is the same as on the whole volume.

A draw opens the subject's arrays as memory maps, copies one patch out and
closes them: a training job holds one subject's patch at a time, whatever the
cohort size (about 30 MB of disk per 1 mm BraTS subject instead of ~0.25 GB
of RAM). Patches are centred on tumour with probability ``pos_fraction`` (on
a random brain voxel otherwise) and then augmented with MONAI transforms.
Every random choice comes from (seed, step, slot), so a batch is a pure
function of the step number: a resumed run continues bit for bit, and
DataLoader workers may build batches in any order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..io import write_json
from . import data as sdata

CACHE_VERSION = 1
WT_BIT, TC_BIT, ET_BIT, BRAIN_BIT = 1, 2, 4, 8
REGION_BITS = (WT_BIT, TC_BIT, ET_BIT)  # in the order of btpipe.labels.REGIONS


# ---------------------------------------------------------------- writing the cache


def cache_key(item: dict, labels, normalize: bool) -> str:
    """Digest of what a subject's cache holds: input files (path, size, mtime), labels, normalisation."""
    files = [str(p) for p in item["image"]] + [str(item["label"])]
    stats = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    blob = json.dumps({"v": CACHE_VERSION, "files": stats, "labels": labels,
                       "normalize": bool(normalize)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crop_box(image: np.ndarray, wt: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding every non-zero voxel of any channel and every tumour voxel."""
    keep = np.any(image != 0, axis=0) | wt
    if not keep.any():
        return tuple(slice(0, s) for s in keep.shape)
    bounds = [np.flatnonzero(keep.any(axis=tuple(a for a in range(3) if a != axis)))
              for axis in range(3)]
    return tuple(slice(int(b[0]), int(b[-1]) + 1) for b in bounds)


def region_bits(regions: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Boolean regions [3, ...] (WT, TC, ET) and a brain mask -> uint8 bit flags."""
    bits = brain.astype(np.uint8) * BRAIN_BIT
    for bit, region in zip(REGION_BITS, regions):
        bits |= region.astype(np.uint8) * bit
    return bits


def bits_to_regions(bits: np.ndarray) -> np.ndarray:
    """uint8 bit flags -> float32 regions [3, ...] (WT, TC, ET)."""
    return np.stack([(bits & bit) > 0 for bit in REGION_BITS]).astype(np.float32)


def _write_array(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / name, np.ascontiguousarray(array))


def write_subject_cache(item: dict, labels, normalize: bool, folder: Path) -> Path:
    """Load one subject (NIfTI), crop, encode and write its cache folder atomically."""
    subject = item.get("subject")
    image, ref_img = sdata.load_images(item["image"], subject)
    regions = sdata.load_label_regions(item["label"], labels, ref_img, subject) > 0.5
    if normalize:
        image = sdata.normalize_channels(image)
    box = crop_box(image, regions[0])
    cropped = image[(slice(None), *box)]
    bits = region_bits(regions[(slice(None), *box)], np.any(cropped != 0, axis=0))
    dtype = np.float16 if normalize else np.float32
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        _write_array(tmp, "image.npy", cropped.astype(dtype))
        _write_array(tmp, "regions.npy", bits)
        write_json(tmp / "meta.json", {"subject": subject, "box": [[s.start, s.stop] for s in box],
                                       "shape": list(image.shape[1:]), "key": folder.name})
        try:
            os.rename(tmp, folder)
        except OSError:  # another job wrote the same cache first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _remove_stale_caches(cache_dir: Path, subject: str, keep: Path) -> None:
    for old in cache_dir.glob(f"{subject}-*"):
        if old != keep and old.is_dir() and (old / "meta.json").exists():
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path, blocking: bool):
    """Yield True while holding an exclusive lock on `path`; False if another job holds it
    and ``blocking`` is off. Without flock (some network mounts) it yields True: duplicated
    work, never wrong results."""
    import fcntl

    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_written(folder: Path) -> bool:
    return (folder / "meta.json").exists()  # written last, inside the renamed folder


def _build_or_defer(item, labels, normalize, cache_dir: Path, wait: bool) -> Path | None:
    """The subject's cache folder, written here if needed; None when another job is
    writing it and ``wait`` is off."""
    subject = str(item.get("subject"))
    folder = cache_dir / f"{subject}-{cache_key(item, labels, normalize)}"
    if _is_written(folder):
        return folder
    with _lock(cache_dir / f".{subject}.lock", blocking=wait) as held:
        if not held:
            return None
        if not _is_written(folder):
            write_subject_cache(item, labels, normalize, folder)
            _remove_stale_caches(cache_dir, subject, folder)
    return folder


def ensure_cached(items, labels, normalize: bool, cache_dir) -> list[Path]:
    """Cache folder of every item, writing the missing ones (one subject in memory at a time).

    Jobs sharing ``cache_dir`` (the fold models of one run) split the work:
    a subject another job is writing is skipped and waited for at the end.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    folders = [_build_or_defer(item, labels, normalize, cache_dir, wait=False) for item in items]
    return [folder or _build_or_defer(item, labels, normalize, cache_dir, wait=True)
            for item, folder in zip(items, folders)]


# ---------------------------------------------------------------- reading it back


def sample_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (run seed, step, slot, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def stream_index(position: int, n_items: int, seed: int) -> tuple[int, int]:
    """Item index and epoch for the position-th draw of an endless epoch stream.

    Each epoch is a permutation of the items seeded by (seed, epoch); the
    stream concatenates epochs, so its k-th element is a pure function of k.
    """
    epoch, offset = divmod(int(position), int(n_items))
    perm = np.random.default_rng(sample_seed(seed, epoch, 7)).permutation(n_items)
    return int(perm[offset]), epoch


@contextlib.contextmanager
def _mapped(folder: Path):
    """(image, bits) memory maps of a cache folder, unmapped on exit so RSS stays flat."""
    image = np.load(Path(folder) / "image.npy", mmap_mode="r")
    bits = np.load(Path(folder) / "regions.npy", mmap_mode="r")
    try:
        yield image, bits
    finally:
        del image, bits


def load_cached_subject(folder) -> tuple[torch.Tensor, np.ndarray]:
    """Whole cropped subject: (float32 image tensor [C, ...], bool regions [3, ...])."""
    with _mapped(folder) as (image, bits):
        return torch.from_numpy(np.asarray(image, dtype=np.float32)), bits_to_regions(bits) > 0.5


def patch_start(centre, shape, roi) -> list[int]:
    """Corner of a roi-sized window around ``centre`` moved inside the volume (0 when smaller)."""
    return [int(min(max(c - r // 2, 0), max(s - r, 0))) for c, s, r in zip(centre, shape, roi)]


def pick_centre(bits: np.ndarray, rng: np.random.Generator, pos_fraction: float) -> tuple:
    """A tumour voxel with probability ``pos_fraction``, else a brain voxel outside the tumour."""
    wt = (bits & WT_BIT) > 0
    background = ((bits & BRAIN_BIT) > 0) & ~wt
    want_tumour = rng.random() < pos_fraction
    pool = np.flatnonzero(wt if want_tumour else background)
    if pool.size == 0:  # no tumour (or no background) in this subject: take the other kind
        pool = np.flatnonzero(background if want_tumour else wt)
    if pool.size == 0:
        return tuple(s // 2 for s in bits.shape)
    return np.unravel_index(int(pool[rng.integers(pool.size)]), bits.shape)


def read_patch(folder, roi, rng: np.random.Generator, pos_fraction: float):
    """(float32 image [C, *roi], float32 regions [3, *roi]) cut from a cache folder, zero-padded."""
    with _mapped(folder) as (image, bits):
        centre = pick_centre(np.asarray(bits), rng, pos_fraction)
        start = patch_start(centre, bits.shape, roi)
        window = tuple(slice(b, b + r) for b, r in zip(start, roi))
        img = np.asarray(image[(slice(None), *window)], dtype=np.float32)
        reg = bits_to_regions(np.asarray(bits[window]))
    pad = [(0, 0)] + [(0, r - s) for r, s in zip(roi, img.shape[1:])]
    return np.pad(img, pad), np.pad(reg, pad)


def augmentations():
    """MONAI dictionary transforms applied to every patch: flips, a small affine, intensity."""
    from monai.transforms import (
        Compose, EnsureTyped, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd,
    )
    keys = ("image", "label")
    return Compose([
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandAffined(keys=keys, prob=0.2, rotate_range=[0.26, 0.26, 0.26], scale_range=[0.1, 0.1, 0.1],
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ])


class TrainingBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of optimiser step ``i + 1``: (images, regions, epoch).

    The subjects of each epoch come in a permutation seeded by (seed, epoch);
    slot ``k`` of step ``s`` draws its centre and augmentation from
    ``sample_seed(seed, s, k)``. Nothing depends on which process builds a
    batch or in what order, so DataLoader workers change speed, not numbers.
    """

    def __init__(self, folders, roi_size, batch_size: int, max_steps: int, seed: int,
                 pos_fraction: float = 2 / 3):
        self.folders = [str(f) for f in folders]
        self.roi = [int(r) for r in roi_size]
        self.batch_size = int(batch_size)
        self.max_steps = int(max_steps)
        self.seed = int(seed)
        self.pos_fraction = float(pos_fraction)
        self.transform = augmentations()

    def __len__(self) -> int:
        return self.max_steps

    def draw(self, step: int, slot: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        position = (step - 1) * self.batch_size + slot
        index, epoch = stream_index(position, len(self.folders), self.seed)
        slot_seed = sample_seed(self.seed, step, slot)
        image, regions = read_patch(self.folders[index], self.roi,
                                    np.random.default_rng(slot_seed), self.pos_fraction)
        self.transform.set_random_state(seed=slot_seed)
        sample = self.transform({"image": image, "label": regions})
        return torch.as_tensor(sample["image"]), torch.as_tensor(sample["label"]), epoch

    def __getitem__(self, index: int):
        step = int(index) + 1
        draws = [self.draw(step, slot) for slot in range(self.batch_size)]
        return (torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws]),
                draws[-1][2])


def _single_thread_worker(_):
    torch.set_num_threads(1)  # workers cut patches; the training process owns the cores


def batch_loader(batches: TrainingBatches, first_step: int, num_workers: int = 0):
    """Iterate the batches of steps ``first_step..max_steps`` in order, built by
    ``num_workers`` background processes (0: in this process)."""
    steps = range(int(first_step) - 1, len(batches))
    if int(num_workers) <= 0:
        return (batches[i] for i in steps)
    return iter(torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=steps, num_workers=int(num_workers),
        worker_init_fn=_single_thread_worker, prefetch_factor=2))

