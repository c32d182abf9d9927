"""Image conversion, reorientation, N4 and rigid/affine registration (ANTs).

All registration works in world (physical) coordinates; arrays are never
compared index by index. nibabel affines are RAS, ANTs/ITK physical space is
LPS: the conversion flips the first two world axes.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- conversion

def nib_to_ants(img, dtype=np.float32):
    """A 3-D nibabel image as an ANTs image with the same world geometry.

    Trailing singleton dimensions (SRI24's 4th) are dropped.
    """
    import ants

    data = np.asarray(img.dataobj, dtype=dtype)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {data.shape}")
    lps = _RAS_TO_LPS @ img.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(np.ascontiguousarray(data), origin=tuple(lps[:3, 3]),
                           spacing=tuple(spacing), direction=direction)


def swap_ras_lps(matrix) -> np.ndarray:
    """A 4x4 point-mapping matrix re-expressed between RAS and LPS world
    coordinates (either way: the flip is its own inverse)."""
    return _RAS_TO_LPS @ np.asarray(matrix, float) @ _RAS_TO_LPS


def ants_affine(img) -> np.ndarray:
    """The nibabel (RAS) voxel-to-world affine of an ANTs image."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.direction) * np.asarray(img.spacing)[None, :]
    lps[:3, 3] = img.origin
    return _RAS_TO_LPS @ lps


def ants_to_nib(img, dtype=np.float32):
    """An ANTs image as a nibabel Nifti1Image (data cast to ``dtype``)."""
    import nibabel as nib

    data = img.numpy().astype(dtype)
    out = nib.Nifti1Image(data, ants_affine(img))
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    out.set_data_dtype(dtype)
    return out


def to_lps(img):
    """Reorient a nibabel image to LPS voxel axes (exact: permute/flip, no resampling)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    data = np.asanyarray(img.dataobj)
    if data.ndim > 3:
        img = nib.Nifti1Image(np.asarray(data).reshape(data.shape[:3]), img.affine, img.header)
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
    return img.as_reoriented(ornt)


def axcodes(img) -> str:
    import nibabel as nib

    return "".join(nib.aff2axcodes(img.affine))


# --------------------------------------------------------------------------- N4

def coarse_copy(img, mm):
    """``img`` block-averaged so that no axis is finer than about ``mm``; the
    image itself when none is. Thick-slice axes keep their spacing.

    Each axis is reduced by a whole factor (round(mm / spacing)); trailing voxels
    that do not fill a block are dropped. Block means anti-alias, and cost a
    tenth of ITK's resampling of a 1 mm volume.
    """
    import ants

    factors = [max(1, int(round(mm / float(s)))) for s in img.spacing]
    if factors == [1, 1, 1]:
        return img
    arr = img.numpy()
    blocks = [n // f for n, f in zip(arr.shape, factors)]
    arr = arr[tuple(slice(0, n * f) for n, f in zip(blocks, factors))]
    arr = arr.reshape(blocks[0], factors[0], blocks[1], factors[1], blocks[2], factors[2])
    small = arr.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    spacing = np.array(img.spacing) * factors
    # Block centre: half a block minus half a voxel along each index axis.
    shift = np.asarray(img.direction) @ ((np.array(factors) - 1) / 2.0 * np.array(img.spacing))
    return ants.from_numpy(np.ascontiguousarray(small),
                           origin=tuple(float(v) for v in np.array(img.origin) + shift),
                           spacing=tuple(float(v) for v in spacing), direction=img.direction)


def n4(img, mask=None, fit_mm=4.0):
    """N4 bias correction fitted on a coarse copy (about ``fit_mm`` voxels).

    The bias field is smooth, so it is estimated on a copy resampled to
    ``fit_mm`` (never finer than the input) and applied at full resolution:
    a thick-slice scan is not shrunk through-plane, and the fit costs well
    under a second. Used only to drive registration, never written as the
    output images.
    """
    import ants

    img = img - float(img.min()) + 1.0  # N4 works in the log domain: keep it positive
    small = coarse_copy(img, fit_mm)
    small_mask = (ants.get_mask(small, cleanup=2) if mask is None else
                  ants.resample_image_to_target(mask, small, interp_type="nearestNeighbor"))
    if float(small_mask.sum()) < 0.01 * np.prod(small.shape):
        small_mask = None
    bias = ants.n4_bias_field_correction(
        small, mask=small_mask, shrink_factor=1, return_bias_field=True,
        convergence={"iters": [25, 15], "tol": 1e-6}, spline_param=100)
    field = ants.resample_image_to_target(bias, img, interp_type="linear")
    arr = field.numpy()
    arr = np.where(arr > 1e-3, arr, 1.0)
    return img.new_image_like((img.numpy() / arr).astype(np.float32))


# --------------------------------------------------------------------------- registration

_THREAD_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
# ITK reads the thread count once, at its first use in a process; remember what
# was in force then (None: not known to us, because ants was used before).
_ITK_THREADS = os.environ.get(_THREAD_VAR) if "ants" not in sys.modules else None


def set_threads(deterministic: bool) -> bool:
    """Pin ITK to one thread for bit-identical reruns (else leave ITK's choice).

    Returns False when ``deterministic`` is asked for but this process already
    used ITK with another thread count, which cannot be changed any more: the
    caller must then run the work in a fresh process.
    """
    global _ITK_THREADS
    if "ants" not in sys.modules:
        if deterministic:
            os.environ[_THREAD_VAR] = "1"
        _ITK_THREADS = os.environ.get(_THREAD_VAR)
        return True
    return not deterministic or _ITK_THREADS == "1"


def thread_count(deterministic: bool) -> int:
    """Threads for tools that take a count (greedy): 1 when ``deterministic``,
    else ITK's setting, else every core."""
    if deterministic:
        return 1
    return int(os.environ.get(_THREAD_VAR) or os.cpu_count() or 1)


def _normalise_for_registration(img, mask=None):
    """Scale intensities robustly to 0..1 (inside ``mask`` when given)."""
    import ants

    arr = img.numpy()
    sel = arr[mask.numpy() > 0] if mask is not None else arr[arr > 0]
    if sel.size == 0:
        sel = arr.ravel()
    lo, hi = np.percentile(sel, [0.5, 99.5])
    out = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    if mask is not None:
        out = out * (mask.numpy() > 0)
    return img.new_image_like(out) if hasattr(img, "new_image_like") else ants.from_numpy(
        out, origin=img.origin, spacing=img.spacing, direction=img.direction)


def rigid(fixed, moving, *, transform="Rigid", metric="mattes", initial="identity",
          fixed_mask=None, moving_mask=None, shrink=(4, 2, 1), smooth=(2, 1, 0),
          iterations=(500, 250, 50), sampling=0.25, seed=0, outprefix=None, metric_param=None):
    """Linear registration moving -> fixed; returns the ANTs result dict.

    ``initial``: 'identity' (same-session sequences already share world
    space), 'com' (centre of mass: brain-to-brain to the atlas), or a
    transform file. ``transform``: 'Rigid', 'Similarity' or 'Affine'.
    Returns ``{'fwdtransforms': [mat], 'invtransforms': [mat], ...}`` where
    the .mat maps fixed-space points to moving space (ITK convention), so
    ``apply_transforms(fixed, moving, fwdtransforms)`` resamples moving.
    """
    import ants

    init = {"identity": "Identity", "com": None}.get(initial, initial)
    kwargs = dict(
        # Mattes: histogram bins; CC: neighbourhood radius (voxels).
        type_of_transform=transform, aff_metric=metric,
        aff_sampling=metric_param or (32 if metric != "CC" else 2),
        aff_random_sampling_rate=sampling, aff_iterations=tuple(iterations),
        aff_shrink_factors=tuple(shrink), aff_smoothing_sigmas=tuple(smooth),
        # ANTs treats seed 0 as "no seed" (time-based sampling): shift by one.
        random_seed=int(seed) + 1, mask=fixed_mask, moving_mask=moving_mask,
        mask_all_stages=fixed_mask is not None or moving_mask is not None,
        verbose=False)
    if init is not None:
        kwargs["initial_transform"] = init
    if outprefix is not None:
        kwargs["outprefix"] = str(outprefix)
    return ants.registration(fixed=fixed, moving=moving, **kwargs)


def copy_transform(src, dest) -> None:
    """Copy an ANTs .mat transform atomically."""
    from ..io import atomic_path

    with atomic_path(dest, suffix=".mat") as tmp:
        shutil.copyfile(src, tmp)


def write_inverse(src, dest) -> None:
    """Write the explicit inverse of a linear transform file atomically."""
    import ants

    from ..io import atomic_path

    inv = ants.invert_ants_transform(ants.read_transform(str(src)))
    with atomic_path(dest, suffix=".mat") as tmp:
        ants.write_transform(inv, str(tmp))


def write_identity(dest) -> None:
    import ants

    from ..io import atomic_path

    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    with atomic_path(dest, suffix=".mat") as tmp:
        ants.write_transform(tx, str(tmp))


def matrix_of(transform_path) -> np.ndarray:
    """4x4 homogeneous matrix (LPS physical space) of a linear .mat file.

    The matrix maps fixed-space points to moving-space points. ITK writes
    linear transforms as MATLAB v4 files (12 parameters + the centre), read
    here with SciPy: importing ANTs costs a job ~2.5 s.
    """
    from scipy.io import loadmat

    stored = loadmat(str(transform_path))
    keys = [k for k in stored if k.startswith(("AffineTransform_", "MatrixOffsetTransformBase_"))]
    if len(keys) != 1 or "fixed" not in stored:
        raise ValueError(f"{transform_path}: not an ITK linear transform file")
    params = stored[keys[0]].astype(float).ravel()
    centre = stored["fixed"].astype(float).ravel()
    a = params[:9].reshape(3, 3)
    t = params[9:12]
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + centre - a @ centre
    return m


def rigid_residual(matrix, point=None):
    """(rotation angle in degrees, displacement in mm at ``point``) of a 4x4 matrix.

    The rotation is the nearest proper rotation of the linear part (polar
    decomposition), so a slightly affine matrix reads as its rigid part.
    """
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    p = np.zeros(3) if point is None else np.asarray(point, float)
    moved = matrix[:3, :3] @ p + matrix[:3, 3]
    return angle, float(np.linalg.norm(moved - p))


def voxel_points_lps(affine_ras, mask, every=1) -> np.ndarray:
    """World positions (LPS mm, N x 3) of every ``every``-th non-zero voxel of ``mask``
    on a grid with the NIfTI (RAS) ``affine_ras``."""
    ijk = np.argwhere(np.asarray(mask) > 0)[::every]
    return (_RAS_TO_LPS @ np.asarray(affine_ras, float) @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T


def mean_distance(a, b, points) -> float:
    """Mean distance (mm) between where two 4x4 transforms send ``points`` (N x 3)."""
    moved = [m[:3, :3] @ np.asarray(points).T + m[:3, 3:4] for m in (a, b)]
    return float(np.linalg.norm(moved[0] - moved[1], axis=0).mean())


def rigidify(src, dest, centre_lps) -> None:
    """Replace an affine .mat by its rigid part, keeping where ``centre_lps`` goes.

    Used with ``atlas_transform='rigid'`` when the search ran affine: the
    scale and shear are dropped (polar decomposition) so the brain is not
    resized, and the translation is set so that the brain centre maps to the
    same point as under the full affine.
    """
    m = matrix_of(src)
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    c = np.asarray(centre_lps, float)
    rigid = np.eye(4)
    rigid[:3, :3] = r
    rigid[:3, 3] = m[:3, :3] @ c + m[:3, 3] - r @ c
    write_itk_matrix(rigid, dest, centre=c)


def write_itk_matrix(matrix_lps, dest, centre=(0.0, 0.0, 0.0)) -> None:
    """Write a 4x4 LPS point-mapping matrix as an ITK AffineTransform .mat,
    atomically. ``centre`` only changes how ITK stores it, not the mapping."""
    import ants

    from ..io import atomic_path

    m = np.asarray(matrix_lps, float)
    c = np.asarray(centre, float)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    tx.set_fixed_parameters(list(c))
    # ITK maps x to A (x - c) + t + c, so t = A c + b - c for the matrix's (A, b).
    tx.set_parameters(list(m[:3, :3].ravel()) + list(m[:3, :3] @ c + m[:3, 3] - c))
    with atomic_path(dest, suffix=".mat") as tmp:
        ants.write_transform(tx, str(tmp))


def ncc(x: np.ndarray, y: np.ndarray, sel: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two arrays of one shape on the voxels ``sel``
    (all when None); NaN where either is constant there."""
    if sel is None:
        sel = np.ones(x.shape, bool)
    xs = x[sel].astype(np.float64)
    ys = y[sel].astype(np.float64)
    xs -= xs.mean()
    ys -= ys.mean()
    denom = np.sqrt((xs ** 2).sum() * (ys ** 2).sum())
    return float((xs * ys).sum() / denom) if denom > 0 else float("nan")


def similarity(a, b, mask=None) -> dict:
    """Normalised cross-correlation and Mattes MI between two images on one grid."""
    import ants

    sel = (mask.numpy() > 0) if mask is not None else None
    try:
        mi = float(-ants.image_mutual_information(a, b))
    except Exception:  # noqa: BLE001 - MI is informative only
        mi = float("nan")
    return {"ncc": ncc(a.numpy(), b.numpy(), sel), "mi": mi}


def tool_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("antspyx", "picsl_greedy", "deepbet", "nibabel", "torch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def tmpdir_for(out_dir) -> Path:
    import tempfile

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-reg-", dir=out_dir))
