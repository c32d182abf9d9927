"""The demo cohort: synthetic brain-tumour MRI studies with known truth.

Each subject is the MNI152 template head (anatomy.py), randomly deformed and
scaled, with a glioma (tumour.py), placed in the scanner with a random head
pose, and scanned by one vendor's protocol (acquisition.py): 3D T1 and
post-contrast T1 at 1 mm, 2D axial T2 and FLAIR at 5 mm, each on its own
grid, with coil bias and Rician noise, written as DICOM (dicom.py) with
planted personal data. The truth (labels and brain mask on the native T1ce
grid, survival from a known hazard in clinical.py) turns a pipeline run on
the demo into an end-to-end accuracy check.

Everything is fixed by (seed, index): numpy Generators are spawned from
SeedSequence([seed, index]), one per concern (pose, warp, tumour, clinical,
acquisition, noise), so `voxel_scale` changes the grids but not the subject.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..errors import InputError
from . import layout
from .acquisition import (VENDORS, bias_field, draw_motion, draw_pose, draw_warp,
                          finish_image, make_grid, render)
from .anatomy import cached_template_head, template_head
from .clinical import TRUE_COEFFICIENTS, draw_clinical  # noqa: F401  (re-exported)
from .dicom import PLANTED_PHI, tm, uid, write_series  # noqa: F401  (re-exported)
from .tumour import make_tumour

LABELS = "brats2021"                 # {1: NCR, 2: ED, 4: ET}
SHEET_CLINICAL = ("age", "survival_days", "event", "extent_of_resection")
_SLAB_OFFSETS = (-0.25, 0.25)  # sub-slices across a thick 2D slice (slab profile)
_STREAMS = ("pose", "warp", "tumour", "clinical", "acquisition", "noise")


def _streams(seed: int, index: int) -> dict:
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def _head(cache_dir=None):
    return template_head() if cache_dir is None else cached_template_head(cache_dir)


@functools.lru_cache(maxsize=2)
def _template_tensor(cache_dir=None):
    """The four contrasts and the brain mask as one torch tensor [1, 5, X, Y, Z]."""
    import torch

    head = _head(cache_dir)
    stacked = np.concatenate([head.volumes, head.brain[None]], axis=0)
    return torch.from_numpy(np.ascontiguousarray(stacked))[None]


def vendor_for(seed: int, index: int) -> str:
    """Vendors take turns, so any two consecutive subjects differ (and so do their planes)."""
    names = list(VENDORS)
    return names[(int(seed) + int(index)) % len(names)]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _study(rng, seed, index, clinical, vendor) -> dict:
    info = VENDORS[vendor]
    day = np.datetime64("2015-01-05") + int(rng.integers(0, 9 * 365))
    start = int(rng.integers(7 * 3600, 18 * 3600))
    return {"study_uid": uid(seed, index, "study"), "frame_uid": uid(seed, index, "frame"),
            "date": str(day).replace("-", ""), "start_s": start, "time": tm(start),
            "manufacturer": vendor, "model": info["model"], "software": info["software"],
            "field": info["field"], "agent": info["agent"], "age": clinical["age"],
            "sex": clinical["sex"], "weight_kg": clinical["weight_kg"]}


@contextlib.contextmanager
def _atomic_dir(target: Path):
    """Yield a temporary folder beside `target`; it replaces `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=io.TMP_PREFIX, dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _acquire(head, tensor, protocol, pose, warp, tumour, motion, rng, noise_seed,
             voxel_scale, with_truth):
    """One series: native grid, noiseless image (and truth), bias, noise, uint16."""
    centre = pose.translation_mm + rng.uniform(-5.0, 5.0, 3)   # technologist's centring
    grid = make_grid(protocol, centre, voxel_scale)
    to_template = np.linalg.inv(head.affine) @ np.linalg.inv(pose.head_to_scanner(motion))
    offsets = (0.0,) if protocol.mr_type == "3D" else _SLAB_OFFSETS
    contrast = protocol.sequence
    shot = render(head, tensor, contrast, grid, to_template, warp, tumour,
                  sub_offsets=offsets, with_truth=with_truth)
    image = shot.image
    if len(offsets) > 1:
        image = image.reshape(grid.shape[0], len(offsets), *grid.shape[1:]).mean(axis=1)
    gain = rng.uniform(900.0, 1600.0)
    image = np.ascontiguousarray(image * np.float32(gain), dtype=np.float32)
    factors = bias_field(grid, rng, pose.translation_mm)
    sigma = rng.uniform(0.015, 0.03) if protocol.mr_type == "3D" else rng.uniform(0.02, 0.035)
    pixels = finish_image(image, factors, sigma * gain, noise_seed)
    return grid, pixels, shot, gain


def make_subject(out_dir, subject: str, index: int, seed: int = 0,
                 voxel_scale: float = 1.0, template_cache=None) -> dict:
    """Write one demo subject; return its truth (the content of truth.json).

    Writes layout.dicom_dir(out_dir, subject)/<series>/IM_0001.dcm ... (four
    series: t1, t2, flair, t1ce), and layout.truth_files: seg.nii.gz (brats2021
    labels) and brain_mask.nii.gz on the native T1ce grid, and truth.json.
    The same (seed, index) gives identical pixel data, UIDs and truth.
    voxel_scale multiplies every native spacing (2.0 keeps tests small).
    template_cache: a folder where the template head is stored once and
    reused by later calls in other processes (see cached_template_head).
    """
    if not voxel_scale > 0:
        raise InputError(f"voxel_scale must be positive, got {voxel_scale}", subject=subject)
    out_dir = Path(out_dir)
    rngs = _streams(seed, index)
    cache = None if template_cache is None else str(template_cache)  # one lru_cache key per folder
    head = _head(cache)
    tensor = _template_tensor(cache)

    pose = draw_pose(rngs["pose"])
    warp = draw_warp(rngs["warp"], pose.translation_mm)
    tumour = make_tumour(head, rngs["tumour"], head_scale=float(np.prod(pose.scale)))
    clinical = draw_clinical(rngs["clinical"], tumour.volumes_mm3)
    vendor = vendor_for(seed, index)
    acq = rngs["acquisition"]
    study = _study(acq, seed, index, clinical, vendor)

    series_info, truth_grid = [], None
    files = layout.truth_files(out_dir, subject)
    with _atomic_dir(layout.dicom_dir(out_dir, subject)) as tmp:
        for order, protocol in enumerate(VENDORS[vendor]["protocols"]):
            motion = draw_motion(acq, pose.translation_mm)
            noise_seed = int(rngs["noise"].integers(0, 2**62))
            is_t1ce = protocol.sequence == "t1ce"
            grid, pixels, shot, gain = _acquire(head, tensor, protocol, pose, warp, tumour,
                                                motion, acq, noise_seed, voxel_scale, is_t1ce)
            when = study["start_s"] + 60 * (4 + 5 * order + (6 if is_t1ce else 0))
            slope = 1.0 if vendor != "Philips" else float(np.round(acq.uniform(1.1, 2.5), 5))
            series = {"uid": uid(seed, index, "series", protocol.series_number),
                      "date": study["date"], "time": tm(when),
                      "bandwidth": 200.0 if protocol.mr_type == "3D" else 220.0,
                      "agent": study["agent"],
                      "contrast_ml": round(0.1 * clinical["weight_kg"], 1),  # 0.1 ml/kg
                      "rescale_slope": slope, "window": (0.7 * gain, 1.6 * gain)}
            folder = f"{protocol.series_number:03d}_{_safe_name(protocol.description)}"
            write_series(tmp / folder, pixels, grid, protocol, study, series)
            series_info.append({"sequence": protocol.sequence, "folder": folder,
                                "description": protocol.description,
                                "shape": list(grid.shape), "pixel_mm": list(grid.pixel),
                                "slice_spacing_mm": grid.slice_spacing,
                                "slice_thickness_mm": grid.slice_thickness,
                                # scanner LPS mm, this series against the head pose:
                                # registration accuracy can be scored against it
                                "motion_lps": np.round(motion, 6).tolist()})
            if is_t1ce:
                truth_grid, labels, brain = grid, shot.labels, shot.brain
        seg_img = _save_on_grid(files["seg"], labels, truth_grid)
        _save_on_grid(files["brain_mask"], brain, truth_grid)

    truth = _truth(subject, index, seed, voxel_scale, vendor, pose, tumour, clinical,
                   labels, truth_grid, series_info, head, seg_img)
    io.write_json(files["info"], truth)
    return truth


def _save_on_grid(path, volume, grid):
    """Save a [slice, row, column] volume of the native grid as NIfTI, in the
    closest-to-RAS axis order: the array layout and affine that dcm2niix
    writes for these (scanner-axis aligned) series. Returns the image."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume, np.uint8).transpose(2, 1, 0), grid.nifti_affine())
    canon = nib.as_closest_canonical(img)
    data = np.ascontiguousarray(np.asarray(canon.dataobj))
    io.save_array_nifti(path, data, canon.affine, dtype=np.uint8)
    return nib.Nifti1Image(data, canon.affine)


def planted_sequence_transforms(truth: dict) -> dict:
    """The true T1ce -> T1 / T2 / FLAIR transforms of a demo subject (``truth.json``):
    4x4, T1ce points to the other series' points in scanner LPS mm (ITK's sense)."""
    motion = {s["sequence"]: np.array(s["motion_lps"]) for s in truth["series"]}
    return {s: motion[s] @ np.linalg.inv(motion["t1ce"]) for s in motion if s != "t1ce"}


def _truth(subject, index, seed, voxel_scale, vendor, pose, tumour, clinical, labels, grid,
           series_info, head, seg_img) -> dict:
    voxel_mm3 = grid.pixel[0] * grid.pixel[1] * grid.slice_spacing
    counts = {v: int((labels == v).sum()) for v in (1, 2, 4)}
    volumes = {str(v): counts[v] * voxel_mm3 for v in counts}
    wt = np.argwhere(labels > 0)
    centroid_ras = None
    if len(wt):
        k, r, c = wt.mean(axis=0)
        centroid_ras = (grid.nifti_affine() @ [c, r, k, 1.0])[:3].round(2).tolist()
    centre_mni = (head.affine @ [*tumour.centre, 1.0])[:3].round(2).tolist()
    return {
        "subject": subject, "index": int(index), "seed": int(seed),
        "voxel_scale": float(voxel_scale), "labels": LABELS,
        "age": clinical["age"], "sex": clinical["sex"],
        "survival_days": clinical["survival_days"], "event": clinical["event"],
        "extent_of_resection": clinical["extent_of_resection"],
        "linear_predictor": clinical["linear_predictor"],
        "hazard_features": clinical["features"], "coefficients": dict(TRUE_COEFFICIENTS),
        "event_time_days": clinical["event_time_days"],
        "censor_time_days": clinical["censor_time_days"],
        "tumour_volumes_mm3": volumes,
        "tumour_region_volumes_mm3": {"WT": sum(volumes.values()),
                                      "TC": volumes["1"] + volumes["4"], "ET": volumes["4"]},
        "design_volumes_mm3": tumour.volumes_mm3,
        "tumour_radii_template_mm": tumour.radii, "mass_effect_fraction": tumour.push,
        "tumour_centre_mni_mm": centre_mni, "tumour_centroid_ras_mm": centroid_ras,
        "pose": {"angles_deg": pose.angles_deg.round(3).tolist(),
                 "translation_mm": pose.translation_mm.round(3).tolist(),
                 "scale": pose.scale.round(4).tolist()},
        "manufacturer": vendor, "series": series_info,
        "truth_grid": {"shape": [int(n) for n in seg_img.shape],
                       "affine_ras": seg_img.affine.round(6).tolist()},
    }


def write_sheet(out_dir, subjects) -> Path:
    """Collect the subjects' truth.json into the samples sheet (TSV); return its path.

    Columns: subject, dicom_dir, seg, brain_mask, space (paths relative to the
    sheet's folder, as layout.expected_rows), then age, survival_days, event,
    extent_of_resection. No personal data: the sheet is built from truth.json.
    """
    out_dir = Path(out_dir)
    rows = []
    for subject in subjects:
        info_path = layout.truth_files(out_dir, subject)["info"]
        if not info_path.exists():
            raise InputError("demo subject not written (truth.json missing)",
                             subject=subject, path=info_path)
        info = io.read_json(info_path)
        files = layout.truth_files(out_dir, subject)
        row = {"subject": subject,
               "dicom_dir": layout.dicom_dir(out_dir, subject).relative_to(out_dir).as_posix(),
               "seg": files["seg"].relative_to(out_dir).as_posix(),
               "brain_mask": files["brain_mask"].relative_to(out_dir).as_posix(),
               "space": "native"}
        row.update({key: info[key] for key in SHEET_CLINICAL})
        rows.append(row)
    sheet = layout.sheet_path(out_dir)
    io.write_text(sheet, pd.DataFrame(rows).to_csv(sep="\t", index=False))
    return sheet


def make_demo_cohort(out_dir, n_subjects: int = 24, seed: int = 0,
                     voxel_scale: float = 1.0) -> Path:
    """Write every demo subject and the samples sheet; return the sheet's path."""
    subjects = layout.subject_ids(n_subjects)
    for index, subject in enumerate(subjects):
        make_subject(out_dir, subject, index, seed=seed, voxel_scale=voxel_scale)
    return write_sheet(out_dir, subjects)
