"""The head the demo is made of: nilearn's MNI152 template plus synthetic skull and scalp.

nilearn ships the MNI152 (2009) T1 template with its grey- and white-matter
probability maps and brain mask inside the wheel, so everything here works
offline. The template is brain-only, so CSF, skull (inner table, diploe,
outer table), scalp (galea, fat, skin) and a neck are added as shells at a
given distance from a smoothed brain hull. Each MR contrast is then one
float32 volume on a (bottom-padded) template grid, a mixture of tissue
classes with contrast-specific intensities; tumours are added later, per
subject, in `tumour.py`.

Everything here is computed once per process (`template_head()` is cached)
and, given a cache folder, once per cohort (`cached_template_head`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

CONTRASTS = ("t1", "t1ce", "t2", "flair")

# Relative signal of each tissue class per contrast (white matter on T1 = 1).
# Ordered like real scans: T1 WM > GM > CSF; T2 CSF bright; FLAIR CSF dark.
TISSUE_SIGNAL = {
    #         gm    wm    csf   bone  marrow muscle fat   skin  air
    "t1":    (0.62, 1.00, 0.22, 0.05, 0.65, 0.45, 0.95, 0.55, 0.0),
    "t1ce":  (0.64, 1.00, 0.24, 0.05, 0.70, 0.50, 0.95, 0.60, 0.0),
    "t2":    (0.55, 0.38, 1.00, 0.04, 0.45, 0.30, 0.65, 0.45, 0.0),
    "flair": (0.62, 0.45, 0.07, 0.04, 0.40, 0.30, 0.60, 0.45, 0.0),
}
_CLASS_INDEX = {name: i for i, name in enumerate(
    ("gm", "wm", "csf", "bone", "marrow", "muscle", "fat", "skin", "air"))}

# Tumour compartments per contrast: necrosis (NCR), enhancing tumour (ET),
# edema (ED). Edema is mixed with the tissue it infiltrates (see tumour.py).
TUMOUR_SIGNAL = {
    #         ncr   et    ed
    "t1":    (0.25, 0.55, 0.55),
    "t1ce":  (0.25, 1.40, 0.58),
    "t2":    (0.95, 0.70, 0.88),
    "flair": (0.45, 0.80, 1.05),
}

# Shell profile outside the brain: (distance from the brain hull in mm, class).
# Breakpoints are class centres; intensities are interpolated linearly in
# between, which gives partial-volume edges for free.
_SHELL = (
    (0.0, "csf"), (1.8, "csf"),        # subarachnoid space and dura
    (2.8, "bone"), (3.4, "bone"),      # inner table
    (4.6, "marrow"), (5.6, "marrow"),  # diploe
    (6.6, "bone"), (7.2, "bone"),      # outer table
    (8.2, "muscle"), (9.0, "muscle"),  # galea / temporal muscle
    (10.0, "fat"), (12.4, "fat"),      # subcutaneous fat
    (13.4, "skin"), (14.0, "skin"),    # skin
    (15.0, "air"),
)
_NECK = (  # depth below the neck surface in mm -> class
    (-1.0, "air"), (0.0, "skin"), (1.0, "skin"), (2.0, "fat"), (5.0, "fat"),
    (7.0, "muscle"))

PAD_BOTTOM_MM = 40        # the template stops at z = -72 mm; the neck goes on below
HEAD_CENTRE_MNI = np.array([0.0, -18.0, 10.0])   # RAS mm, middle of the head


@dataclass(frozen=True)
class TemplateHead:
    """Per-contrast volumes and tissue maps on the padded template grid.

    volumes: float32 [4, X, Y, Z] (CONTRASTS order); brain, wm, csf: float32
    [X, Y, Z] in [0, 1]; depth: float32 [X, Y, Z], distance (mm) from the
    voxel to the outside of the brain mask (0 outside); affine: voxel ->
    MNI RAS mm (1 mm voxels).
    """

    volumes: np.ndarray
    brain: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    depth: np.ndarray
    affine: np.ndarray

    @property
    def shape(self):
        return self.brain.shape


_MNI_FILES = {"template": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
              "gm_template": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
              "wm_template": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
MNI_MASK_THRESHOLD = 0.2   # as nilearn.datasets.load_mni152_brain_mask


def load_mni():
    """The arrays of nilearn's load_mni152_{template,gm_template,wm_template,
    brain_mask}(resolution=1), read straight from the files nilearn ships.

    Importing nilearn.datasets costs seconds (it pulls in scikit-learn and the
    atlas fetchers); at resolution 1 those functions only read these files and
    scale them to [0, 1], which is done here (a test checks equality).
    Returns ({name: float32 array}, affine).
    """
    import importlib.util
    from pathlib import Path

    import nibabel as nib

    root = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
    arrays, affine = {}, None
    for name, fname in _MNI_FILES.items():
        img = nib.load(root / fname)
        data = np.asarray(img.dataobj, dtype=np.float32)
        arrays[name] = data / data.max()
        affine = img.affine if affine is None else affine
    arrays["brain_mask"] = (arrays["template"] > MNI_MASK_THRESHOLD).astype(np.float32)
    return arrays, np.asarray(affine, dtype=np.float64)


def _pad_bottom(vol, pad):
    return np.pad(vol, ((0, 0), (0, 0), (pad, 0)))


def upsample(coarse, step, shape):
    """Trilinear upsampling of a coarse grid (voxel i -> fine voxel i*step), cropped
    to `shape`. torch is several times faster than ndimage.zoom here."""
    import torch

    size = [(n - 1) * step + 1 for n in coarse.shape]
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None, None]
    fine = torch.nn.functional.interpolate(t, size=size, mode="trilinear",
                                           align_corners=True)[0, 0].numpy()
    pads = [(0, max(0, n - f)) for n, f in zip(shape, fine.shape)]
    fine = np.pad(fine, pads, mode="edge")
    return np.ascontiguousarray(fine[tuple(slice(0, n) for n in shape)])


def smooth_noise(shape, rng, sigma_vox, step=4):
    """Unit-variance smooth noise, drawn on a coarse grid and upsampled (cheap)."""
    coarse_shape = [int(np.ceil((n - 1) / step)) + 1 for n in shape]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma_vox / step)
    coarse /= coarse.std() + 1e-12
    return upsample(coarse, step, shape)


def _hull_distance(brain, step=2):
    """Distance in mm from a smoothed, sulcus-filled brain hull (0 inside)."""
    small = brain[::step, ::step, ::step]
    hull = ndimage.gaussian_filter(small, 4 / step) > 0.2
    dist = ndimage.distance_transform_edt(~hull) * step
    return upsample(dist, step, brain.shape)


def _profile(depth, profile, contrast):
    xs = np.array([p[0] for p in profile])
    ys = np.array([TISSUE_SIGNAL[contrast][_CLASS_INDEX[p[1]]] for p in profile])
    return np.interp(depth, xs, ys).astype(np.float32)


def _neck_depth(affine, shape):
    """Depth (mm) inside an elliptic neck below the skull base; <0 outside."""
    x, y, z = [(affine[a, a] * np.arange(n) + affine[a, 3]).astype(np.float32)
               for a, n in enumerate(shape)]
    radial = np.sqrt((x[:, None] / 58.0) ** 2 + ((y[None, :] + 32.0) / 64.0) ** 2)
    depth2d = (1.0 - radial) * 60.0
    below = np.clip((-28.0 - z) / 8.0, 0.0, 1.0)   # fades in under the skull base
    return depth2d[:, :, None] * below[None, None, :] - np.float32(60.0) * (1 - below)


@functools.lru_cache(maxsize=1)
def template_head() -> TemplateHead:
    """Build (once per process) the padded template head in every contrast."""
    arrays, affine = load_mni()
    pad = PAD_BOTTOM_MM
    brain = _pad_bottom((arrays["brain_mask"] > 0.5).astype(np.float32), pad)
    gm = _pad_bottom(arrays["gm_template"], pad) * brain
    wm = _pad_bottom(arrays["wm_template"], pad) * brain
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, 2] * pad

    # Skull thickness and scalp vary smoothly over the head (fixed seed: this
    # is the template; subjects differ by deformation, pose and tumour).
    hull_mm = _hull_distance(brain)
    thickness = 1.0 + 0.15 * smooth_noise(brain.shape, np.random.default_rng(7), 12.0)
    shell_depth = hull_mm / thickness
    neck = _neck_depth(affine, brain.shape)
    outside = brain < 0.5
    use_neck = outside & (shell_depth > 8.6) & (neck > -1.0)
    in_brain = np.flatnonzero(~outside)
    in_shell = np.flatnonzero(outside & ~use_neck & (shell_depth < 15.0))
    in_neck = np.flatnonzero(use_neck)
    gm_b, wm_b, csf_b = gm.ravel()[in_brain], wm.ravel()[in_brain], csf.ravel()[in_brain]
    shell_b, neck_b = shell_depth.ravel()[in_shell], neck.ravel()[in_neck]

    volumes = np.zeros((len(CONTRASTS), *brain.shape), np.float32)
    for i, contrast in enumerate(CONTRASTS):
        sig = TISSUE_SIGNAL[contrast]
        flat = volumes[i].reshape(-1)
        flat[in_brain] = gm_b * sig[0] + wm_b * sig[1] + csf_b * sig[2]
        flat[in_shell] = _profile(shell_b, _SHELL, contrast)
        flat[in_neck] = _profile(neck_b, _NECK, contrast)
    # Depth inside the brain, on a 2 mm grid: only used to place tumours.
    depth = (ndimage.distance_transform_edt(brain[::2, ::2, ::2] > 0.5) * 2).astype(np.float32)
    return TemplateHead(volumes=volumes, brain=brain, wm=wm.astype(np.float32),
                        csf=csf.astype(np.float32), depth=depth, affine=affine)


def _template_key() -> str:
    """Changes when the code that builds the head changes (this file)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def cached_template_head(cache_dir) -> TemplateHead:
    """template_head(), stored once under cache_dir (uncompressed, ~300 MB).

    Each demo subject runs in its own Snakemake job: loading the stored head
    takes about a second where building it takes 5-8 s. Concurrent first
    jobs may both build it; the atomic write keeps the file whole.
    """
    from ..io import atomic_path

    path = Path(cache_dir) / f"template_head_{_template_key()}.npz"
    if not path.exists():
        head = template_head()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{f.name: getattr(head, f.name) for f in fields(TemplateHead)})
        return head
    with np.load(path) as stored:
        return TemplateHead(**{f.name: stored[f.name] for f in fields(TemplateHead)})
