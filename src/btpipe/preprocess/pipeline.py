"""Per-subject preprocessing (BraTS recipe) and label mapping between spaces.

Recipe for ``space='native'`` (docs/preprocessing.md says why):

1. read each sequence, record its orientation, reorient to LPS (exact);
2. N4 bias correction of every sequence, used only to drive registration;
3. deepbet brain mask on the native T1ce, checked for plausibility;
4. T1, T2, FLAIR rigidly to the T1ce (Mattes MI, multi-resolution,
   identity start: same session, same world space);
5. N4 T1ce rigidly to the atlas: with ``atlas_target='head'`` (default) the
   whole head to the skull-on SRI24 T1, as the BraTS pipelines do; with
   ``'brain'`` the skull-stripped T1ce to the atlas brain;
6. every sequence resampled ONCE from its native grid to the atlas grid with
   the composed transform, zeroed outside the brain mask;
7. z-scored copies for the models, QC json and montage.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import SEQUENCES
from ..errors import ConfigError, InputError
from ..io import read_label_volume, save_array_nifti, save_nifti, write_json
from . import register as reg
from .atlas import atlas_grid, head_atlas_path, target_grid
from .greedy import greedy_linear
from .normalise import zscore_in_mask
from .qc import montage
from .skullstrip import (components, deepbet_mask, largest_component, plausibility,
                         rough_brain_mask, volume_ml)

OTHER_SEQUENCES = ("t1", "t2", "flair")
# Registration similarity below these reads as a failed registration (see docs:
# tcga-fg-6692 gives atlas NCC 0.45 and pair MI 0.61-0.79 when registration is good;
# a 20-degree misregistration drops atlas NCC below 0.3).
MIN_ATLAS_NCC = 0.3
MIN_PAIR_MI = 0.15


@dataclass(frozen=True)
class RegistrationEffort:
    """How hard the registrations search (``preprocess.registration_effort``).

    ``spacing_mm``: the registrations run on copies no finer than this (a 1 mm
    fine level costs 8x a 2 mm one, and thick-slice native scans carry little
    beyond 2 mm through-plane). ``n4_fit_mm``: grid of the N4 bias fit.
    The same-session registrations run the finest ``len(sequence_iterations)``
    levels of ``shrink``/``smooth``.
    """

    spacing_mm: float
    shrink: tuple
    smooth: tuple
    atlas_iterations: tuple
    sequence_iterations: tuple
    n4_fit_mm: float
    # greedy: the atlas grid it registers to, and its iterations per level
    # (each level halves that grid's resolution, coarsest first).
    greedy_atlas_mm: float
    greedy_iterations: tuple
    # head to head: more iterations on the finer levels. On tcga-fg-6692 (by hand,
    # raw T1ce), 100x50x10 stopped 1.6-1.8 deg from the BraTS Toolkit pose and
    # 100x100x50 0.8-1.0 deg; 1.2 deg in the pipeline (docs/preprocessing.md).
    greedy_head_iterations: tuple


REGISTRATION_EFFORTS = {
    "standard": RegistrationEffort(2.0, (4, 2, 1), (2, 1, 0), (500, 250, 100), (200, 100, 50), 4.0,
                                   1.0, (100, 50, 10), (100, 100, 50)),
    # For coarse output grids (the demo's 2-3 mm atlas grid): one level less and
    # a 3 mm finest level; docs/preprocessing.md gives its cost and accuracy.
    # Same-session pairs at 3 mm only, N4 fitted at 12 mm: on 8 demo subjects
    # against their planted inter-series motion, 0.25 mm mean error instead of
    # 0.34 mm (two levels, 6 mm fit), and N4 1.6 s instead of 7.5 s a subject.
    "fast": RegistrationEffort(3.0, (2, 1), (1, 0), (250, 100), (100,), 12.0,
                               3.0, (100, 50), (100, 100)),
}
REGISTRATION_BACKENDS = ("greedy", "ants")
ATLAS_TARGETS = ("head", "brain")


class _Timer:
    def __init__(self):
        self.timings = {}

    @contextmanager
    def step(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 2)


def _check_options(registration_backend, atlas_transform, skull_strip, space, effort,
                   atlas_target):
    if atlas_target not in ATLAS_TARGETS:
        raise ConfigError(f"preprocess.atlas_target {atlas_target!r} is not one of "
                          f"{list(ATLAS_TARGETS)}")
    if effort not in REGISTRATION_EFFORTS:
        raise ConfigError(f"preprocess.registration_effort {effort!r} is not one of "
                          f"{sorted(REGISTRATION_EFFORTS)}")
    if registration_backend not in REGISTRATION_BACKENDS:
        raise ConfigError(f"preprocess.registration_backend {registration_backend!r} is not "
                          f"one of {list(REGISTRATION_BACKENDS)}")
    if atlas_transform not in ("rigid", "affine"):
        raise ConfigError(f"preprocess.atlas_transform must be rigid or affine, "
                          f"not {atlas_transform!r}")
    if skull_strip not in ("deepbet", "atlas"):
        raise ConfigError(f"preprocess.skull_strip must be deepbet or atlas, not {skull_strip!r}")
    if space not in ("native", "atlas"):
        raise ConfigError(f"space must be native or atlas, not {space!r}")


def load_sequences(subject, nifti_dir) -> dict:
    """Read ``nifti_dir/{seq}.nii.gz`` for every sequence, checking each one.

    Raises InputError naming subject and file for a missing, unreadable,
    non-3-D, non-finite or constant image.
    """
    import nibabel as nib

    images = {}
    for seq in SEQUENCES:
        path = Path(nifti_dir) / f"{seq}.nii.gz"
        if not path.is_file():
            raise InputError(f"missing {seq} image", subject=subject, path=path)
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
            raise InputError(f"cannot read NIfTI: {exc}", subject=subject, path=path) from exc
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3 or min(data.shape) < 2:
            raise InputError(f"expected a 3-D volume, got shape {data.shape}",
                             subject=subject, path=path)
        if not np.isfinite(data).all():
            raise InputError("image holds NaN or infinite values", subject=subject, path=path)
        if float(data.max()) == float(data.min()):
            raise InputError("image is constant", subject=subject, path=path)
        if abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
            raise InputError("image affine is singular", subject=subject, path=path)
        images[seq] = nib.Nifti1Image(data, img.affine)
    return images


def _seed_everything(seed, deterministic) -> bool:
    """Seeds and thread counts; False if ITK threads can no longer be pinned here."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.set_num_threads(1)
    return reg.set_threads(deterministic)


def _in_fresh_process(kwargs) -> dict:
    """Run preprocess_subject in a new interpreter (ITK threads not yet fixed there)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(preprocess_subject, kwds=kwargs)


def _mask_image(ants_img, arr):
    return ants_img.new_image_like(np.ascontiguousarray(arr.astype(np.float32)))


def _atlas_mask_to_native(atlas_img, t1ce, atlas_to_t1ce):
    """Atlas brain (nonzero) carried to the native T1ce grid (the fallback mask)."""
    import ants

    amask = _mask_image(atlas_img, atlas_img.numpy() > 0)
    warped = ants.apply_transforms(t1ce, amask, [str(atlas_to_t1ce)], interpolator="linear")
    return largest_component(warped.numpy() > 0.5)


@dataclass(frozen=True)
class Registrar:
    """One subject's linear registrations; the backend runs the atlas step.

    Every method writes an ITK .mat (LPS, fixed points -> moving points) and
    returns its path, whichever backend ran, so the rest of the recipe
    (composition, one resampling, label maps) does not depend on it.
    """

    backend: str
    effort: RegistrationEffort
    seed: int
    threads: int  # greedy's; ANTs reads ITK's global setting
    work: Path

    def to_atlas(self, atlas_path, t1ce_n4, mask_arr, transform, target) -> str:
        """N4 T1ce -> atlas (``rigid`` or ``affine``), head to head or brain to brain.

        ``head``: the whole N4 T1ce against the skull-on SRI24 T1, as the BraTS
        pipelines register (CaPTk, BraTS Toolkit); on tcga-fg-6692 it lands
        about 1.2 deg from the BraTS Toolkit pose, brain to brain about 3 deg
        (pitch, the axis 5.5 mm slices constrain least; docs/preprocessing.md).
        """
        if target == "head":
            moving = reg._normalise_for_registration(t1ce_n4)
            iterations = self.effort.greedy_head_iterations
        else:
            moving = reg._normalise_for_registration(t1ce_n4, _mask_image(t1ce_n4, mask_arr))
            iterations = self.effort.greedy_iterations
        if self.backend == "greedy":
            # Rigid NMI from the image centres: on tcga-fg-6692 closer to the BraTS
            # reference than an affine search cut to its rigid part (docs).
            fixed = _atlas_target(atlas_path, self.effort.greedy_atlas_mm, target)
            return str(greedy_linear(
                fixed, moving, self.work / "atlas.mat", dof=6 if transform == "rigid" else 12,
                metric="NMI", initial="centers", iterations=iterations,
                threads=self.threads, seed=self.seed))
        return self._ants_to_atlas(_atlas_target(atlas_path, self.effort.spacing_mm, target),
                                   moving, transform)

    def _ants_to_atlas(self, fixed, moving, transform) -> str:
        """ANTs: ``rigid`` runs an affine search and keeps its rigid part (polar
        decomposition, brain centre kept in place): the affine stage absorbs the
        brain-size difference to the atlas that otherwise biases a rigid fit."""
        import ants

        prefix = self.work / "atlas_"
        res = reg.rigid(fixed, moving, transform="Affine", metric="mattes", initial="com",
                        shrink=self.effort.shrink, smooth=self.effort.smooth,
                        iterations=self.effort.atlas_iterations, sampling=0.25, seed=self.seed,
                        outprefix=prefix)
        affine = res["fwdtransforms"][0]
        if transform == "affine":
            return affine
        rigid_path = f"{prefix}rigid.mat"
        centre = np.array(ants.get_center_of_mass(_mask_image(fixed, fixed.numpy() > 0)))
        reg.rigidify(affine, rigid_path, centre)
        return rigid_path

    def same_session(self, fixed, moving, fixed_mask, name) -> str:
        """Rigid, identity start (same session, same world space), metric in ``fixed_mask``.

        ANTs with either backend: greedy's rigid NMI from the identity sent
        T2 or FLAIR 39 deg / 154 mm off in 3 of 6 runs of the test subject
        (docs/preprocessing.md); ANTs' pairs agree within 0.06 deg run to run.
        """
        levels = len(self.effort.sequence_iterations)  # the finest ones
        res = reg.rigid(fixed, moving, transform="Rigid", metric="mattes", initial="identity",
                        fixed_mask=fixed_mask, shrink=self.effort.shrink[-levels:],
                        smooth=self.effort.smooth[-levels:],
                        iterations=self.effort.sequence_iterations,
                        sampling=0.25, seed=self.seed, outprefix=self.work / f"{name}_")
        return res["fwdtransforms"][0]


def _atlas_fixed(atlas_path, spacing_mm):
    """(atlas on a ``spacing_mm`` grid, its brain scaled 0..1): a registration target."""
    atlas = atlas_grid(atlas_path, spacing_mm)
    return atlas, reg._normalise_for_registration(atlas, _mask_image(atlas, atlas.numpy() > 0))


def _atlas_target(atlas_path, spacing_mm, target):
    """The registration target on a ``spacing_mm`` grid: atlas brain or skull-on head."""
    if target == "head":
        return reg._normalise_for_registration(
            atlas_grid(head_atlas_path(atlas_path), spacing_mm))
    return _atlas_fixed(atlas_path, spacing_mm)[1]


def _rough_brain_to_atlas(fixed, t1ce_n4, seed, outprefix):
    """Rough brain (morphology, no model) -> brain atlas, affine: the fallback's search."""
    rough = rough_brain_mask(t1ce_n4.numpy(), t1ce_n4.spacing)
    moving = reg._normalise_for_registration(t1ce_n4, _mask_image(t1ce_n4, rough))
    res = reg.rigid(fixed, moving, transform="Affine", metric="mattes", initial="com",
                    shrink=(4, 2), smooth=(2, 1), iterations=(500, 250), sampling=0.25,
                    seed=seed, outprefix=outprefix)
    return res["fwdtransforms"][0]


def preprocess_subject(subject, nifti_dir, out_dir, atlas_path, spacing_mm=1.0,
                       registration_backend="greedy", atlas_transform="rigid", write_n4=False,
                       skull_strip="deepbet", brain_volume_ml=(700, 2200),
                       clip_percentiles=(0.5, 99.5), space="native", seed=0,
                       deterministic=False, registration_effort="standard",
                       atlas_target="head") -> dict:
    """Preprocess one subject into atlas space; returns the QC dict.

    Inputs: ``nifti_dir/{t1,t1ce,t2,flair}.nii.gz`` (native grids with skull,
    or with ``space='atlas'`` already co-registered and skull-stripped).
    Writes under ``out_dir``: ``{seq}.nii.gz`` (atlas grid, skull-stripped,
    raw intensities, float32), ``norm/{seq}.nii.gz`` (z-scored in the brain),
    ``brain_mask.nii.gz``, ``brain_mask_native.nii.gz`` (native T1ce grid),
    ``transforms/{t1ce_to_atlas,atlas_to_t1ce,t1_to_t1ce,t2_to_t1ce,
    flair_to_t1ce}.mat`` (ITK), ``qc.json`` and ``qc.png``; with
    ``write_n4`` also ``n4/{seq}.nii.gz`` (native grid). Every file is written
    atomically; qc.json last. ``atlas_target='head'`` needs the skull-on atlas
    ``t1_head.nii[.gz]`` beside ``atlas_path`` (``fetch_atlas`` writes it).
    """
    _check_options(registration_backend, atlas_transform, skull_strip, space,
                   registration_effort, atlas_target)
    if space == "native" and atlas_target == "head":
        head_atlas_path(atlas_path)  # fail before any work when it is missing
    if not _seed_everything(seed, deterministic):
        # This process already ran ITK multithreaded (e.g. an earlier subject or a
        # caller's own ANTs work): only a fresh process can honour `deterministic`.
        return _in_fresh_process(dict(
            subject=subject, nifti_dir=str(nifti_dir), out_dir=str(out_dir),
            atlas_path=str(atlas_path), spacing_mm=spacing_mm,
            registration_backend=registration_backend, atlas_transform=atlas_transform,
            write_n4=write_n4, skull_strip=skull_strip, brain_volume_ml=tuple(brain_volume_ml),
            clip_percentiles=tuple(clip_percentiles), space=space, seed=seed,
            deterministic=deterministic, registration_effort=registration_effort,
            atlas_target=atlas_target))
    timer = _Timer()
    out_dir = Path(out_dir)
    with timer.step("load"):
        images = load_sequences(subject, nifti_dir)
    qc = {
        "subject": subject, "space": space, "backend": registration_backend,
        "atlas_transform": atlas_transform, "skull_strip": skull_strip,
        "spacing_mm": float(spacing_mm), "seed": int(seed), "deterministic": bool(deterministic),
        "registration_effort": registration_effort, "atlas_target": atlas_target,
        "orientation_in": {s: reg.axcodes(images[s]) for s in SEQUENCES},
        "orientation_out": "LPS", "flags": [], "tool_versions": reg.tool_versions(),
    }
    if space == "atlas":
        _atlas_space_subject(subject, images, out_dir, atlas_path, spacing_mm,
                             clip_percentiles, brain_volume_ml, qc, timer)
    else:
        _native_subject(subject, images, out_dir, atlas_path, spacing_mm, atlas_transform,
                        write_n4, skull_strip, brain_volume_ml, clip_percentiles, seed, qc, timer,
                        REGISTRATION_EFFORTS[registration_effort])
    qc["timings_s"] = timer.timings
    qc["timings_s"]["total"] = round(sum(timer.timings.values()), 2)
    write_json(out_dir / "qc.json", qc)
    return qc


def _native_subject(subject, images, out_dir, atlas_path, spacing_mm, atlas_transform,
                    write_n4, skull_strip, brain_volume_ml, clip_percentiles, seed, qc, timer,
                    effort):
    import ants

    tdir = out_dir / "transforms"
    tdir.mkdir(parents=True, exist_ok=True)
    work = reg.tmpdir_for(out_dir)
    registrar = Registrar(qc["backend"], effort, seed, reg.thread_count(qc["deterministic"]),
                          work)
    try:
        with timer.step("reorient"):
            lps = {s: reg.to_lps(images[s]) for s in SEQUENCES}
            native = {s: reg.nib_to_ants(lps[s]) for s in SEQUENCES}
        with timer.step("n4"):
            n4 = {s: reg.n4(native[s], fit_mm=effort.n4_fit_mm) for s in SEQUENCES}
        if write_n4:
            for s in SEQUENCES:
                save_nifti(out_dir / "n4" / f"{s}.nii.gz", reg.ants_to_nib(n4[s]))
        t1ce = native["t1ce"]
        zooms = t1ce.spacing

        mask_arr, problems = None, ["skull_strip='atlas' requested"]
        if skull_strip == "deepbet":
            with timer.step("skullstrip"):
                m = deepbet_mask(lps["t1ce"], seed=seed)
                mask_arr = np.asarray(m.dataobj) > 0
                problems = plausibility(mask_arr, zooms, brain_volume_ml)
            qc["skullstrip_deepbet"] = {"volume_ml": volume_ml(mask_arr, zooms),
                                        "problems": problems}
        with timer.step("register_atlas"):
            if problems:
                # Fallback: atlas brain carried back through a rough-brain registration.
                qc["flags"].append("skullstrip_fallback")
                qc["skullstrip_fallback_reason"] = problems
                atlas_reg, fixed = _atlas_fixed(atlas_path, effort.spacing_mm)
                rough = _rough_brain_to_atlas(fixed, n4["t1ce"], seed, work / "rough_")
                reg.write_inverse(rough, work / "rough_inv.mat")
                mask_arr = _atlas_mask_to_native(atlas_reg, t1ce, work / "rough_inv.mat")
            fwd = registrar.to_atlas(atlas_path, n4["t1ce"], mask_arr, atlas_transform,
                                     qc["atlas_target"])
            reg.copy_transform(fwd, tdir / "t1ce_to_atlas.mat")
            reg.write_inverse(fwd, tdir / "atlas_to_t1ce.mat")
        mask_native = _mask_image(t1ce, mask_arr)

        with timer.step("register_sequences"):
            pair_sim = register_sequence_pairs(n4, mask_native, registrar, tdir)

        with timer.step("resample"):
            grid = target_grid(spacing_mm)
            to_atlas = str(tdir / "t1ce_to_atlas.mat")
            amask = ants.apply_transforms(grid, mask_native, [to_atlas], interpolator="linear")
            brain = largest_component(amask.numpy() > 0.5)
            out = {}
            for s in SEQUENCES:
                chain = [to_atlas] if s == "t1ce" else [to_atlas, str(tdir / f"{s}_to_t1ce.mat")]
                # One interpolation from the native grid: the transforms are composed.
                w = ants.apply_transforms(grid, native[s], chain, interpolator="linear")
                out[s] = (w.numpy() * brain).astype(np.float32)
            atlas_on_grid = atlas_grid(atlas_path, spacing_mm)
            n4_atlas = ants.apply_transforms(grid, n4["t1ce"], [to_atlas], interpolator="linear")
            pair_sim["t1ce_to_atlas"] = reg.similarity(atlas_on_grid, n4_atlas,
                                                       _mask_image(grid, brain))
        _write_outputs(out_dir, grid, out, brain, clip_percentiles, timer)
        # Native mask on the T1ce grid exactly as given (not the LPS copy).
        native_ref = reg.nib_to_ants(images["t1ce"])
        back = ants.resample_image_to_target(mask_native, native_ref,
                                             interp_type="nearestNeighbor")
        save_array_nifti(out_dir / "brain_mask_native.nii.gz",
                         (back.numpy() > 0.5).astype(np.uint8), images["t1ce"].affine,
                         dtype=np.uint8)
        qc["registration"] = pair_sim
        _flag_registration(qc, pair_sim)
        _finish_qc(qc, brain, grid, brain_volume_ml, out, out_dir, subject, timer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def register_sequence_pairs(n4, mask_native, registrar, tdir) -> dict:
    """T1, T2, FLAIR -> T1ce (N4-corrected images), transforms written to
    ``tdir/{seq}_to_t1ce.mat``; returns each pair's QC similarity."""
    import ants

    # Same-session rigid alignment on a grid no finer than 2 mm: at 1 mm
    # the step took 69 s instead of 19 s on a demo subject, for transforms
    # within 0.03 deg / 0.17 mm of these (docs/preprocessing.md).
    spacing = registrar.effort.spacing_mm
    fixed = reg.coarse_copy(reg._normalise_for_registration(n4["t1ce"]), spacing)
    reg_mask = ants.resample_image_to_target(ants.iMath(mask_native, "MD", 3), fixed,
                                             interp_type="nearestNeighbor")
    # QC similarity on the registration grid: on the native 1 mm grid it cost
    # 2-3 s per sequence, more than the registration itself.
    sim_mask = ants.resample_image_to_target(mask_native, fixed, interp_type="nearestNeighbor")
    pair_sim = {}
    for s in OTHER_SEQUENCES:
        moving = reg.coarse_copy(reg._normalise_for_registration(n4[s]), spacing)
        fwd = registrar.same_session(fixed, moving, reg_mask, s)
        reg.copy_transform(fwd, Path(tdir) / f"{s}_to_t1ce.mat")
        warped = ants.apply_transforms(fixed, moving, [fwd], interpolator="linear")
        pair_sim[f"{s}_to_t1ce"] = reg.similarity(fixed, warped, sim_mask)
    return pair_sim


def _flag_registration(qc, sims):
    low = [k for k, v in sims.items()
           if (k == "t1ce_to_atlas" and not v["ncc"] >= MIN_ATLAS_NCC)
           or (k != "t1ce_to_atlas" and not v["mi"] >= MIN_PAIR_MI)]
    if low:
        qc["flags"].append("low_registration_similarity")
        qc["low_similarity_pairs"] = low


def _write_outputs(out_dir, grid, images, brain, clip_percentiles, timer):
    with timer.step("write"):
        affine = reg.ants_affine(grid)
        for s, arr in images.items():
            save_array_nifti(out_dir / f"{s}.nii.gz", arr, affine, dtype=np.float32)
            save_array_nifti(out_dir / "norm" / f"{s}.nii.gz",
                             zscore_in_mask(arr, brain, clip_percentiles), affine,
                             dtype=np.float32)
        save_array_nifti(out_dir / "brain_mask.nii.gz", brain.astype(np.uint8), affine,
                         dtype=np.uint8)


def _finish_qc(qc, brain, grid, brain_volume_ml, images, out_dir, subject, timer):
    vol = volume_ml(brain, grid.spacing)
    n, frac = components(brain)
    qc["brain_volume_ml"] = round(vol, 1)
    qc["mask_components"] = n
    qc["mask_largest_component_fraction"] = round(frac, 4)
    lo, hi = brain_volume_ml
    if not lo <= vol <= hi:
        qc["flags"].append("brain_volume_out_of_range")
    with timer.step("qc_png"):
        montage(out_dir / "qc.png", images, brain, title=f"{subject} ({qc['space']})")


def _atlas_space_subject(subject, images, out_dir, atlas_path, spacing_mm, clip_percentiles,
                         brain_volume_ml, qc, timer):
    """Inputs already co-registered and skull-stripped in atlas space."""
    import ants

    with timer.step("resample"):
        grid = target_grid(spacing_mm)
        out, union = {}, None
        for s in SEQUENCES:
            a = reg.nib_to_ants(reg.to_lps(images[s]))
            same = (a.shape == grid.shape and np.allclose(a.origin, grid.origin, atol=1e-3)
                    and np.allclose(a.spacing, grid.spacing, atol=1e-4)
                    and np.allclose(a.direction, grid.direction, atol=1e-4))
            if not same:
                a = ants.resample_image_to_target(a, grid, interp_type="linear")
            arr = a.numpy().astype(np.float32)
            out[s] = arr
            union = (arr != 0) if union is None else (union | (arr != 0))
        brain = union.astype(np.uint8)
        out = {s: (v * brain).astype(np.float32) for s, v in out.items()}
    _write_outputs(out_dir, grid, out, brain, clip_percentiles, timer)
    t1ce = images["t1ce"]
    native_mask = np.zeros(t1ce.shape, np.uint8)
    native_mask[np.asarray(t1ce.dataobj) != 0] = 1
    for s in SEQUENCES:
        if images[s].shape == t1ce.shape and np.allclose(images[s].affine, t1ce.affine, atol=1e-3):
            native_mask |= (np.asarray(images[s].dataobj) != 0).astype(np.uint8)
    save_array_nifti(out_dir / "brain_mask_native.nii.gz", native_mask, t1ce.affine,
                     dtype=np.uint8)
    tdir = out_dir / "transforms"
    for name in ("t1ce_to_atlas", "atlas_to_t1ce") + tuple(f"{s}_to_t1ce" for s in OTHER_SEQUENCES):
        reg.write_identity(tdir / f"{name}.mat")
    qc["registration"] = {}
    _finish_qc(qc, brain, grid, brain_volume_ml, out, out_dir, subject, timer)


# --------------------------------------------------------------------------- labels

def _read_label_image(path, what):
    import nibabel as nib

    img, data = read_label_volume(path, what)
    if data.min() < 0 or data.max() > 255:
        raise InputError(f"{what} must hold integer labels 0..255", path=path)
    return nib.Nifti1Image(data.astype(np.float32), img.affine)


def _map_labels(labels_img, target_img, transform):
    """Nearest-neighbour labels of ``labels_img`` on ``target_img``'s grid.

    ``transform`` (ITK .mat) maps target-space points to label-space points
    in LPS millimetres, as ANTs' apply_transforms uses it; SciPy samples the
    labels, so no job imports ANTs just to move a label map.
    """
    from scipy import ndimage

    lps = reg.matrix_of(transform)
    target_to_source = (np.linalg.inv(labels_img.affine) @ reg.swap_ras_lps(lps)
                        @ target_img.affine)
    labels = np.asanyarray(labels_img.dataobj)
    out = ndimage.affine_transform(labels, target_to_source[:3, :3], target_to_source[:3, 3],
                                   output_shape=target_img.shape[:3], order=0, mode="constant",
                                   cval=0.0)
    return np.round(out).astype(np.uint8)


def labels_to_atlas(native_labels, preproc_dir, out_path):
    """Labels on the native T1ce grid -> the subject's atlas grid (uint8).

    Inputs: a label NIfTI on the native T1ce grid (expert labels or a
    reference brain mask), the subject's preproc folder (for
    ``brain_mask.nii.gz`` as the target grid and
    ``transforms/t1ce_to_atlas.mat``). Nearest neighbour keeps label values.
    Output: ``out_path`` (written atomically); returns it.
    """
    import nibabel as nib

    preproc_dir = Path(preproc_dir)
    labels = _read_label_image(native_labels, "native labels")
    grid_img = nib.load(str(preproc_dir / "brain_mask.nii.gz"))
    data = _map_labels(labels, grid_img, preproc_dir / "transforms" / "t1ce_to_atlas.mat")
    save_array_nifti(out_path, data, grid_img.affine, dtype=np.uint8)
    return Path(out_path)


def labels_to_native(atlas_labels, preproc_dir, native_reference, out_path):
    """Atlas-space labels -> the native T1ce grid with ``atlas_to_t1ce`` (uint8).

    Inputs: a label NIfTI in atlas space, the subject's preproc folder, the
    native T1ce image (its grid is the target). Nearest neighbour keeps label
    values. Output: ``out_path`` (written atomically); returns it.
    """
    import nibabel as nib

    preproc_dir = Path(preproc_dir)
    labels = _read_label_image(atlas_labels, "atlas labels")
    ref_path = Path(native_reference)
    if not ref_path.is_file():
        raise InputError("native reference image not found", path=ref_path)
    ref_img = nib.load(str(ref_path))
    data = _map_labels(labels, ref_img, preproc_dir / "transforms" / "atlas_to_t1ce.mat")
    save_array_nifti(out_path, data, ref_img.affine, dtype=np.uint8)
    return Path(out_path)
