"""Shape/location features and anchor-slice bags on hand-built volumes and one real segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from btpipe.errors import InputError
from btpipe.features import shape as shp
from btpipe.features import slices as sl
from btpipe.features.cohort import slice_coverage_table
from btpipe.io import save_array_nifti

SHAPE = (48, 44, 40)


def brute_force_areas(mask):
    """Tumour voxels per slice, counted slice by slice (independent of the library code)."""
    return [np.array([int(mask[i].sum()) for i in range(mask.shape[0])]),
            np.array([int(mask[:, j].sum()) for j in range(mask.shape[1])]),
            np.array([int(mask[:, :, k].sum()) for k in range(mask.shape[2])])]


def irregular_tumour():
    """Edema block + a plate and a rod, so the largest slice differs from the block centre."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[12:30, 10:26, 8:22] = 2
    seg[26, 6:34, 4:30] = 1          # sagittal plate at x = 26
    seg[14:20, 18:24, 16:20] = 4
    seg[20:40, 30, 10:14] = 4         # a rod: coronal slice y = 30 gains area but not the most
    return seg


def write_case(folder, seg, n_seq=4, affine=None):
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4) if affine is None else affine
    brain = np.zeros(SHAPE, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    images = {}
    for i, seq in enumerate(("t1", "t1ce", "t2", "flair")[:n_seq]):
        # constant 10 (i + 1) inside the brain: channel order is readable from the crops
        images[seq] = folder / f"{seq}.nii.gz"
        save_array_nifti(images[seq], np.where(brain, 10.0 * (i + 1), 0).astype(np.float32), affine)
    save_array_nifti(folder / "seg.nii.gz", seg, affine, dtype=np.uint8)
    save_array_nifti(folder / "brain.nii.gz", brain.astype(np.uint8), affine, dtype=np.uint8)
    return images, folder / "seg.nii.gz", folder / "brain.nii.gz"


# ----------------------------------------------------------------------------- shape

def test_sphere_volume_surface_and_location(tmp_path):
    r = 10.0
    spacing = 1.0
    grid = np.indices(SHAPE).astype(float)
    centre = np.array([30.0, 22.0, 20.0])
    sphere = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) <= r ** 2
    seg = np.where(sphere, 2, 0).astype(np.uint8)
    # brain: a box centred at x = 20 -> tumour centre 10 voxels further along array axis 0
    brain = np.zeros(SHAPE, np.uint8)
    brain[5:36, 5:40, 5:36] = 1
    affine = np.diag([spacing, spacing, spacing, 1.0])  # RAS: array +i = patient right
    save_array_nifti(tmp_path / "seg.nii.gz", seg, affine, dtype=np.uint8)
    save_array_nifti(tmp_path / "brain.nii.gz", brain, affine, dtype=np.uint8)
    f = shp.shape_location_features(tmp_path / "seg.nii.gz", tmp_path / "brain.nii.gz", "brats2021")
    assert f["shape_WT_volume_mm3"] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.03)
    assert f["shape_WT_surface_area_mm2"] == pytest.approx(4 * np.pi * r ** 2, rel=0.03)
    assert f["shape_ED_volume_mm3"] == f["shape_WT_volume_mm3"] and f["shape_ET_volume_mm3"] == 0
    assert f["shape_WT_brain_ratio"] == pytest.approx(sphere.sum() / brain.sum())
    assert f["shape_WT_components"] == 1
    brain_centre = np.argwhere(brain).mean(axis=0)
    assert f["shape_WT_centroid_distance_mm"] == pytest.approx(np.linalg.norm(centre - brain_centre), abs=1e-6)
    assert f["shape_WT_hemisphere"] == -1  # right hemisphere (LPS x < brain centre)
    assert [f[f"shape_WT_max_area_slice_{p}"] for p in sl.PLANES] == [30, 22, 20]


def test_hemisphere_follows_world_not_array(tmp_path):
    """The same arrays with a flipped x axis in the affine put the tumour on the left."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[30:36, 20:26, 18:24] = 4
    seg[40:42, 2:4, 2:4] = 4  # a second lesion
    brain = np.zeros(SHAPE, np.uint8)
    brain[5:36, 5:40, 5:36] = 1
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    save_array_nifti(tmp_path / "seg.nii.gz", seg, flipped, dtype=np.uint8)
    save_array_nifti(tmp_path / "brain.nii.gz", brain, flipped, dtype=np.uint8)
    f = shp.shape_location_features(tmp_path / "seg.nii.gz", tmp_path / "brain.nii.gz")
    assert f["shape_WT_hemisphere"] == 1 and f["shape_WT_components"] == 2


def test_shape_with_no_tumour_is_nan_location(tmp_path):
    _, seg, brain = write_case(tmp_path, np.zeros(SHAPE, np.uint8), n_seq=1)
    f = shp.shape_location_features(seg, brain)
    assert f["shape_WT_volume_mm3"] == 0 and f["shape_WT_surface_area_mm2"] == 0
    assert np.isnan(f["shape_WT_hemisphere"]) and np.isnan(f["shape_WT_max_area_slice_axial"])


# ----------------------------------------------------------------------------- slice bags

def test_anchors_are_the_largest_slices_and_windows_are_honoured(tmp_path):
    seg = irregular_tumour()
    images, seg_path, _ = write_case(tmp_path, seg)
    before, after = (1, 3, 0), (2, 0, 4)
    bag = sl.build_slice_bag(images, seg_path, before=before, after=after, size=32)
    areas = brute_force_areas(seg > 0)
    K = sum(before) + sum(after) + 3
    assert bag["K"] == K and bag["n_slices"] == K
    assert bag["images"].shape == (K, 4, 32, 32) and bag["images"].dtype == np.float16
    assert bag["plane"].dtype == np.int8 and bag["is_anchor"].dtype == bool
    for p in range(3):
        anchor = int(np.argmax(areas[p]))
        rows = bag["plane"] == p
        assert bag["slice_index"][rows & bag["is_anchor"]].tolist() == [anchor]
        assert bag["slice_index"][rows].tolist() == list(range(anchor - before[p], anchor + after[p] + 1))
        assert bag["tumour_area"][rows].tolist() == areas[p][bag["slice_index"][rows]].tolist()
        selected = areas[p][bag["slice_index"][rows]].sum()
        assert bag["coverage"][p] == pytest.approx(selected / (seg > 0).sum())
    assert bag["coverage_mean"] == pytest.approx(bag["coverage"].mean())
    assert bag["slice_index"][bag["plane"] == 0][bag["is_anchor"][bag["plane"] == 0]] == 26
    # channels in sequence order: each crop holds that sequence's constant brain value
    for c in range(4):
        assert float(bag["images"][:, c].max()) == pytest.approx(10.0 * (c + 1), rel=1e-3)
    assert bag["sequences"].tolist() == ["t1", "t1ce", "t2", "flair"]


def test_window_slides_inward_at_the_volume_edge(tmp_path):
    seg = np.zeros(SHAPE, np.uint8)
    seg[1:4, 20:30, 36:39] = 2  # near x = 0 and the top z edge
    seg[2, 18:32, 37] = 1
    images, seg_path, _ = write_case(tmp_path, seg, n_seq=1)
    bag = sl.build_slice_bag(images, seg_path, before=(5, 1, 1), after=(1, 1, 6), size=16)
    sag = bag["slice_index"][bag["plane"] == 0]
    axi = bag["slice_index"][bag["plane"] == 2]
    assert sag.tolist() == list(range(0, 7)) and axi.tolist() == list(range(SHAPE[2] - 8, SHAPE[2]))
    assert bag["slice_index"][(bag["plane"] == 0) & bag["is_anchor"]].tolist() == [2]
    assert bag["n_slices"] == bag["K"] == 18
    assert sl.slice_window(3, 50, 50, 10) == (0, 10)  # axis shorter than the window: all slices


def test_crop_box_covers_the_tumour_of_the_plane(tmp_path):
    seg = irregular_tumour()
    images, seg_path, _ = write_case(tmp_path, seg, n_seq=1)
    bag = sl.build_slice_bag(images, seg_path, before=(2, 2, 2), after=(2, 2, 2), size=64, margin=0.1)
    for p in range(3):
        rows = np.flatnonzero(bag["plane"] == p)
        boxes = bag["box"][rows]
        assert (boxes == boxes[0]).all()  # one box per plane
        r0, r1, c0, c1 = boxes[0]
        assert r1 - r0 == c1 - c0  # square
        tumour = np.moveaxis(seg > 0, p, 0)[bag["slice_index"][rows]].any(axis=0)
        idx = np.argwhere(tumour)
        assert r0 <= idx[:, 0].min() and idx[:, 0].max() < r1
        assert c0 <= idx[:, 1].min() and idx[:, 1].max() < c1
        assert r1 - r0 >= 1.2 * max(np.ptp(idx[:, 0]) + 1, np.ptp(idx[:, 1]) + 1) - 1


def test_empty_tumour_gives_brain_centre_bag(tmp_path):
    images, seg_path, brain_path = write_case(tmp_path, np.zeros(SHAPE, np.uint8), n_seq=2)
    bag = sl.build_slice_bag(images, seg_path, before=(1, 1, 1), after=(1, 1, 1), size=16,
                             brain_mask_path=brain_path)
    assert bag["empty_tumour"] == 1 and np.isnan(bag["coverage"]).all() and np.isnan(bag["coverage_mean"])
    brain = np.zeros(SHAPE, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    centre = np.rint(np.argwhere(brain).mean(axis=0)).astype(int)
    assert bag["slice_index"][bag["is_anchor"]].tolist() == centre.tolist()
    assert bag["images"].shape == (9, 2, 16, 16) and (bag["tumour_area"] == 0).all()


def test_save_and_cohort_table(tmp_path):
    images, seg_path, _ = write_case(tmp_path / "a", irregular_tumour(), n_seq=2)
    bag = sl.build_slice_bag(images, seg_path, before=(1, 1, 1), after=(1, 1, 1), size=16)
    nbytes = sl.save_slice_bag(tmp_path / "a" / "slices.npz", bag)
    loaded = sl.load_slice_bag(tmp_path / "a" / "slices.npz")
    assert nbytes == (tmp_path / "a" / "slices.npz").stat().st_size
    np.testing.assert_array_equal(loaded["images"], bag["images"])
    assert loaded["images"].dtype == np.float16 and not list(tmp_path.glob("a/.tmp-*"))
    table = slice_coverage_table({"a": tmp_path / "a" / "slices.npz"})
    assert table["plane"].tolist() == ["sagittal", "coronal", "axial", "mean"]
    assert (table["bytes"] == nbytes).all() and (table["K"] == 9).all()
    assert table["coverage"].tolist() == pytest.approx(list(bag["coverage"]) + [float(bag["coverage_mean"])])


def test_split_k():
    assert sl.split_k(8) == ((1, 1, 0), (1, 1, 1))
    for K in sl.DEFAULT_KS:
        before, after = sl.split_k(K)
        assert sum(before) + sum(after) + 3 == K
        assert max(b + a for b, a in zip(before, after)) - min(b + a for b, a in zip(before, after)) <= 1


def test_coverage_curve_on_real_segmentation(testdata):
    seg = testdata / "mri/tcga-fg-6692/reference/segmentations/fusion_simple.nii.gz"
    curve = sl.coverage_curve(seg, "brats2021")
    for plane, group in curve.groupby("plane"):
        values = group.sort_values("K")["coverage"].to_numpy()
        assert (np.diff(values) >= -1e-12).all(), plane  # monotone non-decreasing in K
        assert 0 < values[0] < values[-1] <= 1
    # at the largest K each plane's window spans many more slices than at K = 8
    mean = curve[curve["plane"] == "mean"].set_index("K")["coverage"]
    assert mean[96] > 3 * mean[8]


def test_real_subject_bag(testdata):
    ref = testdata / "mri/tcga-fg-6692/reference"
    images = {s: ref / "brats_space" / f"{n}_bet.nii.gz"
              for s, n in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "fla"))}
    seg = ref / "segmentations/fusion_simple.nii.gz"
    bag = sl.build_slice_bag(images, seg, before=(2, 2, 2), after=(2, 2, 2), size=64)
    curve = sl.coverage_curve(seg, ks=(int(bag["K"]),))
    expected = curve[curve["plane"] != "mean"]["coverage"].to_numpy()
    # split_k(18) = 2 + 3 per plane, the bag here 2 + 2: the bag covers at most that much
    assert (bag["coverage"] <= expected + 1e-6).all() and (bag["coverage"] > 0).all()
    label_map, _ = shp.read_label_map(seg)
    areas = brute_force_areas(label_map > 0)
    assert bag["slice_index"][bag["is_anchor"]].tolist() == [int(np.argmax(a)) for a in areas]
    assert np.isfinite(bag["images"].astype(np.float32)).all() and bag["images"].max() > 0


def test_bad_axes_or_missing_sequence(tmp_path):
    images, seg_path, _ = write_case(tmp_path, irregular_tumour(), n_seq=1)
    with pytest.raises(InputError, match="t2"):
        sl.build_slice_bag(images, seg_path, sequences=("t1", "t2"))
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    save_array_nifti(tmp_path / "swapped.nii.gz", irregular_tumour(), swap, dtype=np.uint8)
    with pytest.raises(InputError, match="axes"):
        sl.build_slice_bag(images, tmp_path / "swapped.nii.gz")
