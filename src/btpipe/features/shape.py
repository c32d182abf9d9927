"""Tumour shape and location features (volumes, surface, position in the brain).

Images are read with SimpleITK so that any format it reads works (NIfTI, NRRD) and
world coordinates are ITK's LPS: +x = patient left, +y = posterior, +z = superior.
Arrays are used in index order [i, j, k] = [x, y, z] (the transpose of SimpleITK's
[z, y, x] arrays), so axis 0 is sagittal, 1 coronal, 2 axial for an atlas-space image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..labels import region_values, resolve_convention

PREFIX = "shape_"
VOLUME_REGIONS = ("WT", "TC", "ET", "NCR", "ED")
PLANES = ("sagittal", "coronal", "axial")
# Geometry of two images must agree to this tolerance (mm, direction cosines).
GEOMETRY_TOL = 1e-3


@dataclass
class Volume:
    """A 3-D array in [x, y, z] index order with its index-to-world (LPS, mm) mapping."""

    data: np.ndarray
    spacing: np.ndarray  # (3,) mm
    origin: np.ndarray  # (3,) mm, LPS
    direction: np.ndarray  # (3, 3) columns = world direction of each array axis
    image: sitk.Image  # the image as read (for pyradiomics and geometry checks)

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_world(self, index) -> np.ndarray:
        """Continuous index [x, y, z] (..., 3) -> LPS world coordinates in mm."""
        index = np.asarray(index, dtype=float)
        return self.origin + (index * self.spacing) @ self.direction.T


def read_volume(path, subject=None, what="image") -> Volume:
    """Read an image with SimpleITK; InputError naming subject and file if unreadable."""
    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK trace
        raise InputError(f"cannot read {what}: {str(exc).splitlines()[-1]}", subject, path) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a 3-D scalar image, got {image.GetDimension()}-D "
                         f"with {image.GetNumberOfComponentsPerPixel()} components", subject, path)
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(data=data, spacing=np.array(image.GetSpacing(), float),
                  origin=np.array(image.GetOrigin(), float),
                  direction=np.array(image.GetDirection(), float).reshape(3, 3), image=image)


def check_same_grid(reference: Volume, other: Volume, subject=None, path=None, what="image"):
    """Raise InputError unless `other` lies on the grid of `reference` (size, spacing, origin, axes)."""
    problems = []
    if reference.data.shape != other.data.shape:
        problems.append(f"size {other.data.shape} != {reference.data.shape}")
    for name in ("spacing", "origin", "direction"):
        if not np.allclose(getattr(reference, name), getattr(other, name), atol=GEOMETRY_TOL):
            problems.append(f"{name} differs")
    if problems:
        raise InputError(f"{what} is not on the segmentation grid: " + "; ".join(problems),
                         subject, path)


def region_masks(label_map, labels, regions=VOLUME_REGIONS) -> dict[str, np.ndarray]:
    """Boolean mask per region name (WT/TC/ET/NCR/ED) for an integer label map."""
    values = region_values(resolve_convention(labels))
    label_map = np.asarray(label_map)
    if label_map.size and label_map.min() >= 0 and label_map.max() < 65536:
        # A lookup table is ~10x faster than np.isin on a 240x240x155 volume.
        masks = {}
        for region in regions:
            table = np.zeros(int(label_map.max()) + 1, bool)
            table[[v for v in values[region] if v < table.size]] = True
            masks[region] = table[label_map]
        return masks
    return {r: np.isin(label_map, values[r]) for r in regions}


def read_label_map(path, subject=None) -> tuple[np.ndarray, Volume]:
    """Integer label map [x, y, z] and its geometry; InputError for non-integer labels."""
    seg = read_volume(path, subject, "segmentation")
    data = seg.data
    if data.dtype.kind == "f":
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise InputError("segmentation holds non-integer values", subject, path)
        data = rounded
    return data.astype(np.int32, copy=False), seg


# Gaussian smoothing (voxels) of the binary mask before marching cubes. Without it the
# voxel staircase makes the area ~9% too large at every size (sphere r = 5..30 mm); with
# sigma 1 the error is -1.7% at r = 10 mm, < 0.2% from r = 20 mm, -9% at r = 5 mm.
SURFACE_SMOOTHING_VOXELS = 1.0


def surface_area_mm2(mask, spacing, smoothing=SURFACE_SMOOTHING_VOXELS) -> float:
    """Area (mm^2) of the iso-surface (level 0.5) of a smoothed binary mask; 0 if empty.

    Marching cubes (skimage, Lewiner) on the mask smoothed with a Gaussian of `smoothing`
    voxels (0 = the raw binary mask, as pyradiomics' SurfaceArea does).
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    # Crop to the object and pad so the surface is closed and the smoothing is not cut off.
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    pad = 1 + int(np.ceil(4 * smoothing))
    field = np.pad(mask[box].astype(np.float32), pad)
    if smoothing > 0:
        field = ndimage.gaussian_filter(field, smoothing)
    if field.max() <= 0.5:  # a speck that smoothing flattens below the level
        field = np.pad(mask[box].astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(field, level=0.5, spacing=tuple(float(s) for s in spacing))
    return float(mesh_surface_area(verts, faces))


def largest_area_slices(mask) -> tuple[int, int, int]:
    """Index of the slice with the largest tumour area along array axes 0, 1, 2 (first on ties)."""
    mask = np.asarray(mask, bool)
    return tuple(int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != axis))))
                 for axis in range(3))


def shape_location_from_arrays(label_map, brain_mask, geometry: Volume, labels="brats2021",
                               masks=None) -> dict:
    """Shape/location features from arrays on one grid (see :func:`shape_location_features`).

    `masks` may pass precomputed :func:`region_masks` (all of VOLUME_REGIONS) to save time.
    """
    if masks is None or any(r not in masks for r in VOLUME_REGIONS):
        masks = region_masks(label_map, labels)
    brain = np.asarray(brain_mask, bool)
    vox = geometry.voxel_volume
    brain_volume = float(brain.sum()) * vox
    out = {f"{PREFIX}brain_volume_mm3": brain_volume}
    for region in VOLUME_REGIONS:
        volume = float(masks[region].sum()) * vox
        out[f"{PREFIX}{region}_volume_mm3"] = volume
        out[f"{PREFIX}{region}_brain_ratio"] = volume / brain_volume if brain_volume > 0 else np.nan
    wt = masks["WT"]
    out[f"{PREFIX}WT_surface_area_mm2"] = surface_area_mm2(wt, geometry.spacing)
    # 26-connectivity: voxels touching at a corner belong to one lesion.
    out[f"{PREFIX}WT_components"] = int(ndimage.label(wt, structure=np.ones((3, 3, 3)))[1])
    if wt.any() and brain.any():
        tumour_centre = geometry.index_to_world(np.argwhere(wt).mean(axis=0))
        brain_centre = geometry.index_to_world(np.argwhere(brain).mean(axis=0))
        offset = tumour_centre - brain_centre
        out[f"{PREFIX}WT_centroid_distance_mm"] = float(np.linalg.norm(offset))
        # LPS world: +x is the patient's left. +1 = left hemisphere, -1 = right, 0 = on the midline.
        out[f"{PREFIX}WT_hemisphere"] = float(np.sign(offset[0]))
    else:
        out[f"{PREFIX}WT_centroid_distance_mm"] = np.nan
        out[f"{PREFIX}WT_hemisphere"] = np.nan
    anchors = largest_area_slices(wt) if wt.any() else (np.nan,) * 3
    for plane, index in zip(PLANES, anchors):
        out[f"{PREFIX}WT_max_area_slice_{plane}"] = float(index)
    return out


def shape_location_features(seg_path, brain_mask_path, labels="brats2021", subject=None) -> dict:
    """Tumour volumes, surface area and location from a label map and a brain mask.

    Inputs: the label map (configured convention `labels`) and the brain mask (non-zero =
    brain) on the same grid. Output: a dict of floats/ints, keys prefixed ``shape_``:
    ``{R}_volume_mm3`` and ``{R}_brain_ratio`` for R in WT/TC/ET/NCR/ED, ``brain_volume_mm3``,
    ``WT_surface_area_mm2`` (marching cubes, skimage, on the mask smoothed by 1 voxel), ``WT_components`` (26-connected),
    ``WT_centroid_distance_mm`` (to the brain-mask centroid), ``WT_hemisphere`` (+1 left,
    -1 right, from the LPS x of the WT centroid relative to the brain centroid) and
    ``WT_max_area_slice_{sagittal,coronal,axial}`` (array axes 0, 1, 2). Location values are
    NaN when there is no tumour.
    """
    label_map, seg = read_label_map(seg_path, subject)
    brain = read_volume(brain_mask_path, subject, "brain mask")
    check_same_grid(seg, brain, subject, brain_mask_path, "brain mask")
    if not np.any(brain.data):
        raise InputError("brain mask is empty", subject, brain_mask_path)
    return shape_location_from_arrays(label_map, brain.data > 0, seg, labels)
