"""pyradiomics features per MRI sequence and tumour region, one row per subject.

Column names: ``{sequence}_{region}_{imagetype}_{class}_{feature}``, e.g.
``t1ce_ET_original_glcm_Contrast``. The sequence is lower case, the region upper case, the
image type is pyradiomics' name lower-cased except the wavelet band letters
(``original``, ``log-sigma-1-0-mm-3d``, ``wavelet-LLH``). Shape features do not depend on the
intensities, so they are computed once per region under the sequence name ``mask``
(``mask_WT_original_shape_VoxelVolume``). pyradiomics' ``diagnostics_*`` entries are dropped.

A region that is empty or too small for pyradiomics (its mask check fails) gets NaN in all its
columns and ``{region}_empty`` = 1 (0 otherwise). The column set comes from the parameter file
alone (learnt once on a small synthetic cube and cached), so every subject has the same columns.

Intensity normalisation: when the parameter file sets ``normalize: true``, btpipe z-scores each
sequence over the brain (the brain mask if given, else the image's non-zero voxels, i.e. the
skull-stripped brain), clips at ``removeOutliers`` standard deviations if set and multiplies by
``normalizeScale`` -- the formula of pyradiomics' ``normalizeImage``, but over the brain
instead of the whole volume, whose background share would otherwise depend on head size and
on the crop. pyradiomics' own ``normalize`` is then switched off.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from .. import SEQUENCES
from ..errors import ConfigError, InputError
from . import shape as shape_mod

log = logging.getLogger(__name__)

DEFAULT_PARAMS = "resources/radiomics/params.yaml"
DEFAULT_REGIONS = ("WT", "TC", "ET", "NCR", "ED")
SHAPE_SEQUENCE = "mask"
SHAPE_CLASSES = ("shape", "shape2D")
# Voxels kept around the tumour when cropping before pyradiomics: more than pyradiomics'
# padDistance (5) and enough for LoG/wavelet filters not to see the crop edge much.
CROP_MARGIN = 16



def _quiet_pyradiomics():
    """pyradiomics logs a GLCM note per run to stderr; keep its errors only (it resets on import)."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)


# ----------------------------------------------------------------------------- parameters

def load_params(params_path) -> dict:
    """Read a pyradiomics parameter file (YAML) into a dict; ConfigError if unusable."""
    path = Path(params_path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"radiomics.params: cannot read {path}: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"radiomics.params: {path} must hold a mapping")
    params.setdefault("imageType", {"Original": {}})
    params.setdefault("setting", {})
    return params


def _split_params(params: dict) -> tuple[dict | None, dict | None]:
    """Parameters for the shape pass and for the intensity pass (None if that pass is unused).

    Normalisation is done by btpipe (see module doc), so pyradiomics' is switched off; the
    label is always 1 because btpipe hands pyradiomics binary region masks.
    """
    settings = dict(params.get("setting") or {})
    settings["normalize"] = False
    settings["label"] = 1
    # diagnostics are dropped anyway; computing them hashes every image (about 70 ms a call)
    settings["additionalInfo"] = False
    classes = params.get("featureClass")
    if classes is None:  # pyradiomics: no featureClass = every class
        from radiomics import getFeatureClasses

        classes = {name: None for name in getFeatureClasses() if name != "shape2D"}
    shape_classes = {k: v for k, v in classes.items() if k == "shape"}
    other_classes = {k: v for k, v in classes.items() if k not in SHAPE_CLASSES}
    base = {k: copy.deepcopy(v) for k, v in params.items() if k not in ("featureClass", "setting")}
    shape_params = {**base, "imageType": {"Original": {}}, "featureClass": shape_classes,
                    "setting": settings} if shape_classes else None
    other_params = {**base, "featureClass": other_classes, "setting": settings} if other_classes else None
    return shape_params, other_params


def _extractor(params: dict):
    """A pyradiomics extractor for a params dict, built once per process (schema checks are slow)."""
    key = yaml.safe_dump(params, sort_keys=True)
    if key not in _EXTRACTORS:
        from radiomics import featureextractor

        _quiet_pyradiomics()
        _EXTRACTORS[key] = featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(params))
    return _EXTRACTORS[key]


_EXTRACTORS: dict = {}


def image_type_name(pyradiomics_name: str) -> str:
    """pyradiomics image type -> column token: lower case, wavelet band letters kept."""
    if pyradiomics_name.lower().startswith("wavelet-"):
        return "wavelet-" + pyradiomics_name.split("-", 1)[1]
    return pyradiomics_name.lower()


def column_name(sequence: str, region: str, pyradiomics_key: str) -> str:
    """``original_glcm_Contrast`` for t1ce/ET -> ``t1ce_ET_original_glcm_Contrast``."""
    image_type, rest = pyradiomics_key.split("_", 1)
    return f"{sequence.lower()}_{region.upper()}_{image_type_name(image_type)}_{rest}"


def _feature_values(result: dict) -> dict:
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


@functools.lru_cache(maxsize=8)
def _feature_keys_cached(params_path: str, mtime: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    shape_params, other_params = _split_params(load_params(params_path))
    # A 32^3 noise cube with a 12^3 box: big enough for every filter and feature class.
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100.0, 20.0, (32, 32, 32)))
    box = np.zeros((32, 32, 32), np.uint8)
    box[10:22, 10:22, 10:22] = 1
    mask = sitk.GetImageFromArray(box)
    mask.CopyInformation(image)
    shape_keys = tuple(_feature_values(_extractor(shape_params).execute(image, mask))) if shape_params else ()
    other_keys = tuple(_feature_values(_extractor(other_params).execute(image, mask))) if other_params else ()
    return shape_keys, other_keys


def feature_keys(params_path=DEFAULT_PARAMS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """pyradiomics keys (shape, intensity) that a parameter file produces, cached per file version."""
    path = os.path.abspath(params_path)
    if not os.path.isfile(path):
        raise ConfigError(f"radiomics.params: {params_path} not found")
    return _feature_keys_cached(path, os.path.getmtime(path))


def feature_columns(params_path=DEFAULT_PARAMS, sequences=SEQUENCES, regions=DEFAULT_REGIONS) -> list[str]:
    """The full, fixed column list of :func:`extract_subject` (without ``subject`` and shape_*)."""
    shape_keys, other_keys = feature_keys(params_path)
    columns = [f"{r}_empty" for r in regions]
    for region in regions:
        columns += [column_name(SHAPE_SEQUENCE, region, k) for k in shape_keys]
        for seq in sequences:
            columns += [column_name(seq, region, k) for k in other_keys]
    return columns


# ----------------------------------------------------------------------------- images

def normalise_in_brain(data, brain, settings: dict, box=None) -> np.ndarray:
    """pyradiomics' normalizeImage formula with mean/std over the brain voxels only.

    Statistics come from the whole brain; only ``data[box]`` is returned (all if box is None).
    """
    values = data[brain].astype(np.float64)
    mean, std = values.mean(), values.std()
    if not np.isfinite(std) or std == 0:
        raise ValueError("image is constant inside the brain; cannot normalise")
    part = data if box is None else data[box]
    out = (part.astype(np.float64) - mean) / std
    outliers = settings.get("removeOutliers")
    if outliers is not None:
        np.clip(out, -outliers, outliers, out=out)
    return out * settings.get("normalizeScale", 1)


def _to_sitk(data_xyz, reference: sitk.Image, dtype=None) -> sitk.Image:
    arr = np.ascontiguousarray(np.asarray(data_xyz).transpose(2, 1, 0))
    image = sitk.GetImageFromArray(arr if dtype is None else arr.astype(dtype))
    image.CopyInformation(reference)
    return image


def _crop_box(mask, margin=CROP_MARGIN) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _sitk_crop(image: sitk.Image, box) -> sitk.Image:
    return image[box[0], box[1], box[2]]  # SimpleITK indexes x, y, z like our arrays


# ----------------------------------------------------------------------------- extraction

def _run(params: dict, image: sitk.Image, mask: sitk.Image) -> dict | None:
    """One pyradiomics run; None when the mask is rejected (too small / empty after resampling)."""
    try:
        return _feature_values(_extractor(params).execute(image, mask))
    except ValueError as exc:  # pyradiomics' checkMask failures are ValueErrors
        log.info("pyradiomics rejected the mask: %s", exc)
        return None


def _run_task(task):
    """Worker entry point (picklable): task = (kind, sequence, region, params, image, mask)."""
    kind, seq, region, params, image, mask = task
    return kind, seq, region, _run(params, image, mask)


def extract_subject(subject, images, seg_path, labels="brats2021", params_path=DEFAULT_PARAMS,
                    sequences=SEQUENCES, regions=DEFAULT_REGIONS, brain_mask_path=None,
                    out_path=None, n_jobs=1, include_shape_location=True) -> pd.DataFrame:
    """Radiomics (and shape/location) features of one subject as a one-row DataFrame.

    Inputs: ``images`` {sequence: path} on the grid of ``seg_path`` (atlas space, raw
    intensities); the label map in convention ``labels``; the pyradiomics parameter file;
    optional brain mask (for normalisation and the shape/location features; without it the
    union of the images' non-zero voxels is the brain). ``n_jobs`` > 1 runs the pyradiomics
    calls in a process pool. Output: columns ``subject``, ``{region}_empty``, the radiomics
    columns (:func:`feature_columns`) and, if ``include_shape_location``, the ``shape_*``
    columns of :func:`btpipe.features.shape.shape_location_features`. Written atomically to
    ``out_path`` (Parquet) when given.
    """
    missing = [s for s in sequences if s not in images]
    if missing:
        raise InputError(f"radiomics: no image for sequence(s) {missing}", subject)
    unknown = [r for r in regions if r not in DEFAULT_REGIONS]
    if unknown:
        raise ConfigError(f"radiomics.regions: unknown region(s) {unknown}; use {list(DEFAULT_REGIONS)}")
    params = load_params(params_path)
    shape_params, other_params = _split_params(params)

    label_map, seg = shape_mod.read_label_map(seg_path, subject)
    vols = {}
    for seq in sequences:
        vols[seq] = shape_mod.read_volume(images[seq], subject, f"{seq} image")
        shape_mod.check_same_grid(seg, vols[seq], subject, images[seq], f"{seq} image")
    if brain_mask_path is not None:
        brain_vol = shape_mod.read_volume(brain_mask_path, subject, "brain mask")
        shape_mod.check_same_grid(seg, brain_vol, subject, brain_mask_path, "brain mask")
        brain = brain_vol.data > 0
    else:
        brain = np.any([vols[s].data != 0 for s in sequences], axis=0) if sequences else label_map > 0
    if not brain.any():
        raise InputError("brain mask is empty", subject, brain_mask_path or seg_path)

    masks = shape_mod.region_masks(label_map, labels, tuple(dict.fromkeys(
        tuple(regions) + shape_mod.VOLUME_REGIONS)))
    row = {"subject": subject}
    values: dict[str, float] = {}
    tumour = np.any([masks[r] for r in regions], axis=0) if regions else np.zeros(label_map.shape, bool)
    tasks = []
    if tumour.any():
        box = _crop_box(tumour)
        settings = params.get("setting") or {}
        reference = _sitk_crop(seg.image, box)
        seq_images = {}
        for seq in sequences:
            if settings.get("normalize", False):
                try:
                    data = normalise_in_brain(vols[seq].data, brain, settings, box)
                except ValueError as exc:
                    raise InputError(str(exc), subject, images[seq]) from exc
            else:
                data = vols[seq].data[box]
            seq_images[seq] = _to_sitk(data, reference, np.float64)
        geometry_image = seq_images[sequences[0]] if sequences else reference
        for region in regions:
            if not masks[region].any():
                continue
            mask_image = _to_sitk(masks[region][box], reference, np.uint8)
            if shape_params:
                tasks.append(("shape", SHAPE_SEQUENCE, region, shape_params, geometry_image, mask_image))
            if other_params:
                tasks += [("intensity", seq, region, other_params, seq_images[seq], mask_image)
                          for seq in sequences]
    try:
        results = _run_tasks(tasks, n_jobs)
    except Exception as exc:  # anything but a rejected mask is a problem with this subject's data
        raise InputError(f"pyradiomics failed: {type(exc).__name__}: {exc}", subject, seg_path) from exc

    rejected = {region: not masks[region].any() for region in regions}
    for _kind, seq, region, result in results:
        if result is None:
            rejected[region] = True
        else:
            values.update({column_name(seq, region, k): v for k, v in result.items()})
    for region in regions:
        row[f"{region}_empty"] = int(rejected[region])
    columns = feature_columns(params_path, sequences, regions)
    for col in columns:
        if col in row:  # the {region}_empty indicators
            continue
        region = col.split("_", 2)[1]
        # A region rejected in any pass is empty everywhere: its columns are all NaN.
        row[col] = np.nan if rejected[region] else values.get(col, np.nan)
    if include_shape_location:
        row.update(shape_mod.shape_location_from_arrays(label_map, brain, seg, labels, masks))
    frame = pd.DataFrame([row])
    if out_path is not None:
        from ..io import write_parquet

        write_parquet(out_path, frame)
    return frame


def _run_tasks(tasks, n_jobs):
    if n_jobs is None or n_jobs <= 1 or len(tasks) <= 1:
        return [_run_task(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=int(n_jobs)) as pool:
        return list(pool.map(_run_task, tasks))
