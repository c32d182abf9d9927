"""The demo cohort generator: truth, geometry, determinism, DICOM and PHI.

Subjects are made at voxel_scale 2 (2 mm 3D, 10 mm 2D slices) or coarser to
stay small; the template head is built once per test process.
"""

from __future__ import annotations

import io as pyio
import json
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from btpipe.demo import layout
from btpipe.demo.anatomy import cached_template_head
from btpipe.demo.clinical import (CENSOR_DAYS, MEDIAN_DAYS, TRUE_COEFFICIENTS, WEIBULL_SHAPE,
                                  draw_clinical, features, linear_predictor)
from btpipe.demo.dicom import PLANTED_PHI
from btpipe.demo.generate import make_demo_cohort, make_subject, write_sheet
from btpipe.errors import InputError
from btpipe.samples import check_rows, read_table

SCALE = 2.0
N_SUBJECTS = 2
# Tests marked slow share one cohort (template head ~5 s CPU, then ~1 s a subject);
# they still run in CI.


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("demo")
    sheet = make_demo_cohort(out, n_subjects=N_SUBJECTS, seed=0, voxel_scale=SCALE)
    return out, sheet


def _series_dirs(out, subject):
    return sorted(p for p in layout.dicom_dir(out, subject).iterdir() if p.is_dir())


def _load(path):
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def _dcm2niix(series_dir, out_dir):
    import dcm2niix

    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([dcm2niix.bin, "-z", "y", "-f", "%s", "-o", str(out_dir),
                           str(series_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(out_dir.glob("*.nii.gz"))


def _harrell_c(time, event, risk):
    """Harrell's C (ties in risk count one half), O(n^2) but fine for n ~ 2000."""
    time, event, risk = map(np.asarray, (time, event, risk))
    comparable = (time[:, None] < time[None, :]) & (event[:, None] == 1)
    concordant = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    return float((concordant * comparable).sum() / comparable.sum())


# ------------------------------------------------------------------ layout and sheet

@pytest.mark.slow
def test_files_follow_the_layout(cohort):
    out, sheet = cohort
    assert sheet == layout.sheet_path(out)
    for subject in layout.subject_ids(N_SUBJECTS):
        series = _series_dirs(out, subject)
        assert len(series) == 4
        for folder in series:
            names = sorted(p.name for p in folder.iterdir())
            assert names[0] == "IM_0001.dcm" and all(n.endswith(".dcm") for n in names)
        for path in layout.truth_files(out, subject).values():
            assert path.exists()
    assert not list(out.rglob(".tmp-*")), "temporary files left behind"


@pytest.mark.slow
def test_sheet_columns_and_checks(cohort):
    out, sheet = cohort
    frame = read_table(sheet)
    assert list(frame.columns) == ["subject", "dicom_dir", "seg", "brain_mask", "space", "age",
                                   "survival_days", "event", "extent_of_resection"]
    assert check_rows(frame) == []
    expected = layout.expected_rows(out, N_SUBJECTS)
    for row, want in zip(frame.to_dict("records"), expected):
        assert {k: row[k] for k in want} == want
        for col in ("dicom_dir", "seg", "brain_mask"):
            assert (sheet.parent / row[col]).exists()
        truth = json.loads(layout.truth_files(out, row["subject"])["info"].read_text())
        assert float(row["age"]) == truth["age"]
        assert int(row["survival_days"]) == truth["survival_days"]
        assert int(row["event"]) == truth["event"]
        assert row["extent_of_resection"] in ("GTR", "STR", "NA")


def test_write_sheet_names_a_missing_subject(tmp_path):
    with pytest.raises(InputError, match="demo-000"):
        write_sheet(tmp_path, ["demo-000"])


def test_bad_voxel_scale_is_refused(tmp_path):
    with pytest.raises(InputError, match="voxel_scale"):
        make_subject(tmp_path, "demo-000", 0, voxel_scale=0)


# ----------------------------------------------------------------------- the truth

@pytest.mark.slow
def test_labels_mask_and_volumes(cohort):
    out, _ = cohort
    for subject in layout.subject_ids(N_SUBJECTS):
        files = layout.truth_files(out, subject)
        seg_img, seg = _load(files["seg"])
        mask_img, mask = _load(files["brain_mask"])
        truth = json.loads(files["info"].read_text())
        assert set(np.unique(seg)) == {0, 1, 2, 4}
        assert np.allclose(seg_img.affine, mask_img.affine) and seg.shape == mask.shape
        assert not np.any((seg > 0) & (mask == 0)), "tumour outside the brain mask"
        voxel = float(np.prod(seg_img.header.get_zooms()[:3]))
        for value in (1, 2, 4):
            assert truth["tumour_volumes_mm3"][str(value)] == pytest.approx(
                (seg == value).sum() * voxel)
        # The brain is inside the field of view (no mask voxel on a face of the grid).
        for axis in range(3):
            assert not np.take(mask, [0, -1], axis=axis).any()
        # Realistic sizes: an adult brain, a tumour of 10-150 cm^3.
        assert 1000e3 < mask.sum() * voxel < 2200e3
        wt = truth["tumour_region_volumes_mm3"]["WT"]
        assert 10e3 < wt < 150e3
        # Measured volumes agree with the design (template-space) volumes.
        assert wt == pytest.approx(truth["design_volumes_mm3"]["WT"], rel=0.25)
        assert truth["tumour_region_volumes_mm3"]["TC"] == pytest.approx(
            truth["design_volumes_mm3"]["TC"], rel=0.35)
        # The reported centroid lies in the tumour's bounding box (world mm).
        idx = np.argwhere(seg > 0)
        corners = nib.affines.apply_affine(seg_img.affine, np.stack([idx.min(0), idx.max(0)]))
        centroid = np.array(truth["tumour_centroid_ras_mm"])
        assert np.all(centroid >= corners.min(0) - 1) and np.all(centroid <= corners.max(0) + 1)


@pytest.mark.slow
def test_truth_hazard_is_the_documented_formula(cohort):
    out, _ = cohort
    for subject in layout.subject_ids(N_SUBJECTS):
        truth = json.loads(layout.truth_files(out, subject)["info"].read_text())
        feats = features(truth["age"], truth["design_volumes_mm3"])
        assert feats == pytest.approx(truth["hazard_features"])
        assert truth["linear_predictor"] == pytest.approx(
            sum(TRUE_COEFFICIENTS[k] * feats[k] for k in TRUE_COEFFICIENTS))
        assert truth["survival_days"] == max(1, round(min(truth["event_time_days"],
                                                          truth["censor_time_days"])))
        assert truth["event"] == int(truth["event_time_days"] <= truth["censor_time_days"])
        assert 30 <= truth["age"] <= 85


def test_survival_model_gives_a_clear_signal():
    """Many draws of the clinical model: censoring ~20-30 %, C-index of the true
    linear predictor ~0.7+, and the Weibull baseline's median as documented."""
    rng = np.random.default_rng(123)
    etas, times, events, baseline = [], [], [], []
    for _ in range(2000):
        wt = np.exp(rng.uniform(np.log(20e3), np.log(120e3)))
        tc = wt * rng.uniform(0.2, 0.5)
        vols = {"WT": wt, "TC": tc, "NCR": tc * rng.uniform(0.05, 0.5)}
        row = draw_clinical(rng, vols)
        assert row["linear_predictor"] == pytest.approx(linear_predictor(row["features"]))
        etas.append(row["linear_predictor"])
        times.append(row["survival_days"])
        events.append(row["event"])
        baseline.append(row["event_time_days"] * np.exp(row["linear_predictor"] / WEIBULL_SHAPE))
    censored = 1 - np.mean(events)
    assert 0.15 < censored < 0.35
    assert _harrell_c(times, events, etas) > 0.68
    assert np.median(baseline) == pytest.approx(MEDIAN_DAYS, rel=0.08)
    assert max(times) <= CENSOR_DAYS[1]


# ---------------------------------------------------------------- DICOM and dcm2niix

@pytest.mark.slow
def test_dicom_headers_are_realistic_and_carry_planted_phi(cohort):
    out, _ = cohort
    seen_vendors = set()
    for subject in layout.subject_ids(N_SUBJECTS):
        sequences = {}
        for folder in _series_dirs(out, subject):
            first = pydicom.dcmread(folder / "IM_0001.dcm")
            for key, value in PLANTED_PHI.items():
                assert str(first.data_element(key).value) == value
            assert first.Modality == "MR" and first.file_meta.TransferSyntaxUID == \
                pydicom.uid.ExplicitVRLittleEndian
            files = sorted(folder.glob("*.dcm"))
            middle = pydicom.dcmread(files[len(files) // 2]).pixel_array
            assert middle.dtype == np.uint16 and middle.max() > 500
            post = "ContrastBolusAgent" in first
            kind = ("t1ce" if post else "t1") if first.MRAcquisitionType == "3D" else \
                ("flair" if "InversionTime" in first else "t2")
            sequences[kind] = first
            seen_vendors.add(str(first.Manufacturer))
            assert float(first.SliceThickness) == pytest.approx(
                (1.0 if kind in ("t1", "t1ce") else 5.0) * SCALE)
        assert set(sequences) == {"t1", "t1ce", "t2", "flair"}
        uids = {str(ds.StudyInstanceUID) for ds in sequences.values()}
        assert len(uids) == 1
        assert len({str(ds.SeriesInstanceUID) for ds in sequences.values()}) == 4
        assert float(sequences["flair"].InversionTime) > 1500
        assert float(sequences["t2"].EchoTime) > 60
    assert len(seen_vendors) == N_SUBJECTS   # vendors take turns


@pytest.mark.slow
def test_no_phi_in_truth_or_sheet(cohort):
    out, sheet = cohort
    texts = [sheet.read_bytes()] + [
        layout.truth_files(out, s)["info"].read_bytes() for s in layout.subject_ids(N_SUBJECTS)]
    for text in texts:
        for value in PLANTED_PHI.values():
            assert value.encode() not in text


@pytest.mark.slow
def test_dcm2niix_reproduces_the_truth_grid(cohort, tmp_path):
    out, _ = cohort
    for subject in layout.subject_ids(N_SUBJECTS):
        seg_img, seg = _load(layout.truth_files(out, subject)["seg"])
        converted = {}
        for folder in _series_dirs(out, subject):
            niftis = _dcm2niix(folder, tmp_path / subject / folder.name)
            assert len(niftis) == 1, f"{folder.name}: {niftis}"
            ds = pydicom.dcmread(folder / "IM_0001.dcm", stop_before_pixels=True)
            converted["t1ce" if "ContrastBolusAgent" in ds else folder.name] = niftis[0]
        t1ce_img, t1ce = _load(converted["t1ce"])
        # Same grid: identical once both are in closest-canonical order (and in
        # fact identical as written: the truth uses dcm2niix's axis order).
        canon_a, canon_b = nib.as_closest_canonical(t1ce_img), nib.as_closest_canonical(seg_img)
        assert canon_a.shape == canon_b.shape
        assert np.allclose(canon_a.affine, canon_b.affine, atol=1e-3)
        assert t1ce.shape == seg.shape and np.allclose(t1ce_img.affine, seg_img.affine,
                                                       atol=1e-3)
        # Same voxels: the enhancing rim is bright and the necrosis dark on T1ce.
        means = {v: float(t1ce[seg == v].mean()) for v in (1, 2, 4)}
        assert means[4] > 1.5 * means[2] and means[4] > 2.0 * means[1]


@pytest.mark.slow
def test_dcm2niix_converts_every_vendor_without_a_warning(cohort, tmp_path):
    """Headers as scanners write them: Siemens 2D slices carry their own
    acquisition times (dcm2niix turns them into SliceTiming instead of warning
    "Siemens MoCo? Bogus slice timing"), GE series their protocol data block
    (else "Missing GE protocol data block")."""
    import dcm2niix

    out, _ = cohort
    philips = make_subject(tmp_path / "more", "demo-002", 2, seed=0, voxel_scale=3.0)
    assert philips["manufacturer"] == "Philips"
    folders = [f for s in layout.subject_ids(N_SUBJECTS) for f in _series_dirs(out, s)]
    folders += _series_dirs(tmp_path / "more", "demo-002")
    vendors, siemens_2d = set(), []
    for folder in folders:
        target = tmp_path / "nii" / folder.parent.name / folder.name
        target.mkdir(parents=True)
        proc = subprocess.run([dcm2niix.bin, "-z", "n", "-b", "y", "-f", "%s", "-o", str(target),
                               str(folder)], capture_output=True, text=True, timeout=120)
        warnings = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if "warning" in line.lower()]
        assert proc.returncode == 0 and not warnings, f"{folder}: {warnings}"
        sidecar = json.loads(next(target.glob("*.json")).read_text())
        vendors.add(sidecar["Manufacturer"])
        if (sidecar["Manufacturer"], sidecar["MRAcquisitionType"]) == ("Siemens", "2D"):
            siemens_2d.append(sidecar)
    assert vendors == {"Siemens", "GE", "Philips"} and len(siemens_2d) == 2   # T2, FLAIR
    for sidecar in siemens_2d:
        times = sidecar["SliceTiming"]
        assert len(set(times)) == len(times) and max(times) < sidecar["RepetitionTime"]


@pytest.mark.slow
def test_flair_shows_edema_on_its_own_grid(cohort, tmp_path):
    """FLAIR is on a different (5 mm axial) grid; labels carried onto it by world
    coordinates still land on bright edema, so all grids share the anatomy."""
    from nibabel.processing import resample_from_to

    out, _ = cohort
    subject = layout.subject_ids(N_SUBJECTS)[0]
    seg_img, _ = _load(layout.truth_files(out, subject)["seg"])
    for folder in _series_dirs(out, subject):
        ds = pydicom.dcmread(folder / "IM_0001.dcm", stop_before_pixels=True)
        if ds.MRAcquisitionType == "2D" and "InversionTime" in ds:
            flair_img, flair = _load(_dcm2niix(folder, tmp_path / "flair")[0])
    assert flair_img.header.get_zooms()[2] > 5 * SCALE - 0.01
    labels = np.asarray(resample_from_to(seg_img, flair_img, order=0).dataobj)
    edema = flair[labels == 2].mean()
    brain = flair[(labels == 0) & (flair > np.percentile(flair, 60))].mean()
    assert edema > 1.2 * brain


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(cohort, tmp_path):
    out, _ = cohort
    subject = layout.subject_ids(N_SUBJECTS)[1]
    # The rerun reads the template head from a stored copy, as parallel demo jobs do.
    cached_template_head(tmp_path / "cache")
    cached_template_head.cache_clear()
    assert len(list((tmp_path / "cache").glob("template_head_*.npz"))) == 1
    again = make_subject(tmp_path / "again", subject, 1, seed=0, voxel_scale=SCALE,
                         template_cache=tmp_path / "cache")
    assert again == json.loads(layout.truth_files(out, subject)["info"].read_text())
    first = sorted(p.relative_to(layout.dicom_dir(out, subject))
                   for p in layout.dicom_dir(out, subject).rglob("*.dcm"))
    second = sorted(p.relative_to(layout.dicom_dir(tmp_path / "again", subject))
                    for p in layout.dicom_dir(tmp_path / "again", subject).rglob("*.dcm"))
    assert first == second
    for rel in first:
        assert (layout.dicom_dir(out, subject) / rel).read_bytes() == \
            (layout.dicom_dir(tmp_path / "again", subject) / rel).read_bytes()
    for key in ("seg", "brain_mask"):
        assert np.array_equal(_load(layout.truth_files(out, subject)[key])[1],
                              _load(layout.truth_files(tmp_path / "again", subject)[key])[1])

    other = make_subject(tmp_path / "other", subject, 1, seed=1, voxel_scale=SCALE)
    assert other["linear_predictor"] != again["linear_predictor"]
    assert other["pose"] != again["pose"]
    a = pydicom.dcmread(next(layout.dicom_dir(out, subject).rglob("IM_0001.dcm")))
    b = pydicom.dcmread(next(layout.dicom_dir(tmp_path / "other", subject).rglob("IM_0001.dcm")))
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.PixelData != b.PixelData


@pytest.mark.slow
def test_voxel_scale_changes_grids_not_the_subject(cohort, tmp_path):
    out, _ = cohort
    subject = layout.subject_ids(N_SUBJECTS)[0]
    coarse = make_subject(tmp_path, subject, 0, seed=0, voxel_scale=4.0)
    fine = json.loads(layout.truth_files(out, subject)["info"].read_text())
    for key in ("age", "survival_days", "event", "linear_predictor", "pose",
                "design_volumes_mm3", "tumour_centre_mni_mm", "manufacturer"):
        assert coarse[key] == fine[key]
    assert coarse["truth_grid"]["shape"] != fine["truth_grid"]["shape"]


# ------------------------------------------------------------------- internals

def test_fast_dicom_encoder_writes_what_pydicom_writes(tmp_path):
    from btpipe.demo.acquisition import VENDORS, make_grid
    from btpipe.demo.dicom import _dataset, slice_acquisition_times, slice_values, uid, write_series

    protocol = VENDORS["SIEMENS"]["protocols"][1]   # 2D: a time per slice
    grid = make_grid(protocol, np.array([3.5, -2.0, 11.25]), voxel_scale=6.0)
    pixels = (np.arange(np.prod(grid.shape)) % 4001).astype(np.uint16).reshape(grid.shape)
    study = {"study_uid": uid("t", 1), "frame_uid": uid("t", 2), "date": "20200102",
             "time": "101500.000000", "manufacturer": "SIEMENS", "model": "Skyra",
             "software": "5.4.1", "field": 3.0, "age": 61.4, "sex": "F", "weight_kg": 64.5}
    series = {"uid": uid("t", 3), "date": "20200102", "time": "102000.000000",
              "bandwidth": 200.0, "agent": "DOTAREM", "contrast_ml": 6.5,
              "rescale_slope": 1.73205, "window": (700.0, 1600.0)}
    paths = write_series(tmp_path, pixels, grid, protocol, study, series)
    times = slice_acquisition_times(protocol, len(paths), "SIEMENS", series["time"])
    for k in (0, len(paths) - 1):
        ds = _dataset(grid, protocol, study, series)
        for keyword, value in slice_values(grid, pixels, series["uid"], k, times[k]).items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = pyio.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert buf.getvalue() == paths[k].read_bytes()
        read = pydicom.dcmread(paths[k])
        assert np.array_equal(read.pixel_array, pixels[k])
        assert np.allclose([float(v) for v in read.ImagePositionPatient], grid.position(k),
                           atol=1e-4)


def test_template_files_equal_the_nilearn_api():
    from nilearn import datasets

    from btpipe.demo.anatomy import load_mni

    arrays, affine = load_mni()
    for name, array in arrays.items():
        img = getattr(datasets, f"load_mni152_{name}")(resolution=1)
        assert np.allclose(img.affine, affine)
        assert np.allclose(np.asarray(img.get_fdata(dtype=np.float32)), array, atol=1e-6), name
