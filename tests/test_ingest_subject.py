"""ingest_subject on small synthetic DICOM subjects (built with pydicom) and on
real NIfTI files; de-identification scanned byte by byte; bad input of one
subject never stops the next one."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from btpipe.errors import InputError
from btpipe.ingest import classify_series, convert_dicom_dir, ingest_subject, load_rules
from btpipe.samples import subject_inputs

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "resources" / "ingest" / "sequence_rules.yaml"
PLANTED = {
    "PatientName": "PLANTED^NAME",
    "PatientID": "PLANTEDID123",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "PLANTEDACC987",
    "InstitutionName": "PLANTED INSTITUTION",
    "ReferringPhysicianName": "PLANTEDDOCTOR^REF",
}
PLANTED_STRINGS = [*PLANTED.values(), "PLANTED NAME", "PLANTEDDOCTOR"]

# (series number, description, TR ms, TE ms, TI ms or None, 2D/3D, slice mm, agent)
GOOD_PROTOCOL = [
    (1, "localizer", 8.6, 4.0, None, "2D", 6.0, None),
    (2, "t1_mprage_sag", 2300.0, 2.3, 900.0, "3D", 2.0, None),
    (3, "t2_tse_tra", 5000.0, 90.0, None, "2D", 3.0, None),
    (4, "t2_tirm_tra_dark-fluid", 9000.0, 85.0, 2500.0, "2D", 3.0, None),
    (5, "ep2d_diff_3scan_trace", 5000.0, 80.0, None, "2D", 3.0, None),
    (6, "t1_se_tra_post", 500.0, 10.0, None, "2D", 3.0, "GADOVIST"),
    (7, "t1_mprage_sag_post_KM", 2300.0, 2.3, 900.0, "3D", 2.0, "GADOVIST"),
]


def write_series(folder: Path, number, description, tr, te, ti, acq, thickness, agent,
                 study_uid, n_slices=12, size=16, drop_slice=None, tilt_file=None,
                 phi=PLANTED, seed=0):
    """A small axial MR series, one classic DICOM file per slice, with realistic
    headers and the planted PHI values."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, frame_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(seed + number)
    volume = (rng.random((n_slices, size, size)) * 1000).astype(np.uint16)
    for k in range(n_slices):
        if k == drop_slice:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
        ds.ManufacturerModelName, ds.MagneticFieldStrength = "Prisma", 3
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20200102"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = "101010"
        ds.StudyID, ds.StudyDescription = "1", "HEAD^BRAIN TUMOUR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        for key, value in phi.items():
            setattr(ds, key, value)
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = number, k + 1, 1
        ds.SeriesDescription = ds.ProtocolName = description
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = tr, te, 90
        if ti is not None:
            ds.InversionTime = ti
        ds.MRAcquisitionType = acq
        ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
        if agent:
            ds.ContrastBolusAgent = agent
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shift = 0.0 if tilt_file is None or k < n_slices // 2 else 5.0
        ds.ImagePositionPatient = [-40.0, -40.0 + shift, -20.0 + k * thickness]
        if tilt_file is not None and k == n_slices - 1:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9848, -0.1736]  # 10 deg off
        ds.SliceThickness, ds.SpacingBetweenSlices = thickness, thickness
        ds.PixelSpacing = [1.0, 1.0]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = volume[k].tobytes()
        ds.save_as(folder / f"IM{number:03d}_{k:03d}.dcm", enforce_file_format=True)
    return volume


def write_subject(folder: Path, protocol=GOOD_PROTOCOL, **kwargs):
    study = generate_uid()
    return {row[0]: write_series(folder / f"S{row[0]}", *row, study_uid=study, **kwargs)
            for row in protocol}


def inputs_for(dicom_dir=None, **paths):
    row = {"dicom_dir": None if dicom_dir is None else str(dicom_dir), "space": "native",
           **{k: str(v) for k, v in paths.items()}}
    return subject_inputs(row)


def all_output_bytes(folder: Path) -> dict:
    """Every file under `folder` as bytes (gzip decompressed)."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            out[path] = data
    return out


@pytest.fixture(scope="module")
def good_subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_good")
    volumes = write_subject(root)
    return root, volumes


@pytest.fixture(scope="module")
def ingested(good_subject, tmp_path_factory):
    root, _ = good_subject
    out = tmp_path_factory.mktemp("results") / "subjects" / "good" / "nifti"
    report = ingest_subject("good", inputs_for(root), out, RULES)
    return out, report


def test_good_dicom_subject_is_classified_and_written(ingested, good_subject):
    out, report = ingested
    _, volumes = good_subject
    chosen = {seq: info["series_number"] for seq, info in report["sequences"].items()}
    # t1ce: both post-contrast T1 match; the 3D MPRAGE (7) beats the 2D SE (6).
    assert chosen == {"t1": 2, "t1ce": 7, "t2": 3, "flair": 4}
    assert report["missing_sequences"] == []
    skipped = {s["series_number"]: s["reason"] for s in report["skipped"]}
    assert "localizer" in skipped[1] and "diffusion" in skipped[5]
    assert "preferred" in skipped[6]
    for seq, number in chosen.items():
        img = nib.load(out / f"{seq}.nii.gz")
        data = np.asanyarray(img.dataobj)
        # voxel values survive conversion exactly (dcm2niix flips rows: compare sets)
        assert data.shape == (16, 16, 12)
        assert sorted(data.ravel().tolist()) == sorted(volumes[number].ravel().tolist())
        assert json.loads((out / f"{seq}.json").read_text())["SeriesNumber"] == number
    table = pd.read_parquet(out / "series.parquet")
    assert len(table) == len(GOOD_PROTOCOL)
    assert table["chosen_as"].notna().sum() == 4
    assert (table["chosen_as"].notna() ^ table["skip_reason"].notna()).all()
    leftovers = [p.name for p in out.iterdir()]
    assert sorted(leftovers) == sorted([f"{s}.{e}" for s in chosen for e in ("nii.gz", "json")]
                                       + ["series.parquet"])


def test_deidentification_leaves_no_planted_value(good_subject, ingested, tmp_path):
    root, _ = good_subject
    out, report = ingested
    converted = tmp_path / "converted"
    table = convert_dicom_dir(root, converted, subject="good")
    table.to_parquet(converted / "table.parquet")
    (converted / "report.json").write_text(json.dumps(report, default=str))
    files = {**all_output_bytes(out), **all_output_bytes(converted)}
    assert len(files) >= 2 * len(GOOD_PROTOCOL) + 5
    for path, data in files.items():
        for planted in PLANTED_STRINGS:
            assert planted.encode() not in data.upper(), f"{planted} found in {path}"
    # The NIfTI header text fields are blank.
    hdr = nib.load(out / "t1.nii.gz").header
    assert all(not bytes(hdr[f]).strip(b"\x00") for f in ("descrip", "aux_file", "intent_name"))


def test_missing_sequence_fails_with_the_series_seen(tmp_path):
    root = tmp_path / "dicom"
    write_subject(root, [p for p in GOOD_PROTOCOL if p[0] not in (4,)])
    with pytest.raises(InputError) as err:
        ingest_subject("nof", inputs_for(root), tmp_path / "out", RULES)
    message = str(err.value)
    assert "nof" in message and "flair" in message and "t2_tse_tra" in message
    report = ingest_subject("nof", inputs_for(root), tmp_path / "out2", RULES,
                            missing_sequence="continue")
    assert report["missing_sequences"] == ["flair"]
    assert not (tmp_path / "out2" / "flair.nii.gz").exists()
    assert (tmp_path / "out2" / "t1.nii.gz").exists()


def test_workflow_marker_files_are_no_input_problem(tmp_path):
    """Snakemake's .snakemake_timestamp (in every directory() output, e.g. the
    demo's DICOM folders) and btpipe's temporary files are skipped silently;
    a stray file of the user's is still named, and neither changes the
    folder's fingerprint."""
    from btpipe.ingest.subject import scan_dicom_folder
    from btpipe.workflow_support import dicom_fingerprint

    root = tmp_path / "dicom"
    write_series(root / "S2", *GOOD_PROTOCOL[1], study_uid=generate_uid(), n_slices=4)
    before = dicom_fingerprint(root)
    (root / ".snakemake_timestamp").write_text("")
    (root / "S2" / ".tmp-abc.dcm").write_bytes(b"partial")
    (root / ".snakemake").mkdir()
    (root / ".snakemake" / "log.txt").write_text("x")
    assert scan_dicom_folder("m", root)["notes"] == []
    assert dicom_fingerprint(root) == before
    (root / "notes.txt").write_text("scanner export notes")
    notes = scan_dicom_folder("m", root)["notes"]
    assert notes == ["1 file(s) that are not readable DICOM images were ignored: notes.txt"]
    assert dicom_fingerprint(root) != before


def test_geometry_defects_are_reported_not_silent(tmp_path):
    root = tmp_path / "dicom"
    study = generate_uid()
    write_series(root / "a", 2, "t1_mprage", 2300, 2.3, 900, "3D", 2.0, None, study,
                 drop_slice=5)
    write_series(root / "b", 3, "t2_tse", 5000, 90, None, "2D", 3.0, None, study,
                 tilt_file=True)
    table = convert_dicom_dir(root, tmp_path / "out")
    by_number = {int(r["series_number"]): r for r in table.to_dict("records")}
    assert any("uneven slice spacing" in w for w in by_number[2]["warnings"])
    assert any("ImageOrientationPatient varies" in w or "deg off" in w
               for w in by_number[3]["warnings"])
    with pytest.raises(InputError) as err:
        ingest_subject("bad", inputs_for(root), tmp_path / "nifti", RULES)
    assert "missing slices" in str(err.value) or "uneven" in str(err.value)


def test_real_failing_series_and_a_good_subject_in_one_session(testdata, tmp_path,
                                                               good_subject):
    failing = testdata / "dicom" / "dicom2nifti" / "failing"
    outcomes = {}
    for case in ("gantrytilting", "slicecount", "sliceorientation"):
        with pytest.raises(InputError) as err:
            ingest_subject(f"s-{case}", inputs_for(failing / case), tmp_path / case, RULES)
        outcomes[case] = str(err.value)
        # nothing half-written
        assert not any(p.suffix in (".gz", ".json", ".parquet")
                       for p in (tmp_path / case).iterdir())
    # The tilted series is CT: ingest refuses it for that; its tilt is reported
    # in the series table (checked with the CT-allowing rules below).
    assert "modality CT" in outcomes["gantrytilting"]
    rules = yaml.safe_load(RULES.read_text())
    rules.update(modalities=["MR", "CT"], min_slices=1)
    ct_rules = tmp_path / "rules.yaml"
    ct_rules.write_text(yaml.safe_dump(rules))
    table = classify_series(convert_dicom_dir(failing / "gantrytilting", tmp_path / "tilt"),
                            load_rules(ct_rules))
    reasons = dict(zip(table["file"].map(lambda f: Path(f).name), table["skip_reason"]))
    assert reasons["series-4.nii.gz"].startswith("sheared geometry")
    assert reasons["series-4_Tilt_1.nii.gz"] == "no sequence rule matched"
    assert "too few slices (2 < 10)" in outcomes["slicecount"]
    assert "too few slices (2 < 10)" in outcomes["sliceorientation"]
    truncated = tmp_path / "trunc"
    truncated.mkdir()
    (truncated / "MR_truncated.dcm").write_bytes(
        (testdata / "dicom" / "pydicom" / "MR_truncated.dcm").read_bytes())
    with pytest.raises(InputError) as err:
        ingest_subject("s-trunc", inputs_for(truncated), tmp_path / "t", RULES)
    assert "MR_truncated.dcm" in str(err.value) and "s-trunc" in str(err.value)
    # ... and the next subject still ingests.
    report = ingest_subject("next", inputs_for(good_subject[0]), tmp_path / "next", RULES)
    assert set(report["sequences"]) == {"t1", "t1ce", "t2", "flair"}


def test_nifti_inputs_checked_and_copied_clean(testdata, tmp_path):
    native = testdata / "mri" / "tcga-fg-6692" / "native"
    paths = {s: native / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    out = tmp_path / "nifti"
    report = ingest_subject("tcga", inputs_for(**paths), out, RULES)
    assert report["source"] == "nifti" and set(report["sequences"]) == set(paths)
    for seq, src in paths.items():
        a, b = nib.load(src), nib.load(out / f"{seq}.nii.gz")
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
        assert b.header["descrip"].tobytes().strip(b"\x00") == b""
        assert json.loads((out / f"{seq}.json").read_text())["Shape"] == list(a.shape)


def test_bad_nifti_inputs_raise_naming_the_file(testdata, tmp_path):
    src = nib.load(testdata / "mri" / "tcga-fg-6692" / "native" / "t1.nii.gz")
    # a real-intensity block, small so the test stays fast
    data = np.asanyarray(src.dataobj)[96:128, 96:128, 8:18].astype(np.float32)
    good = {s: tmp_path / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    for path in good.values():
        nib.save(nib.Nifti1Image(data, src.affine), path)
    nan = data.copy()
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, src.affine), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), src.affine), tmp_path / "4d.nii.gz")
    nib.save(nib.Nifti1Image(data[..., None], src.affine), tmp_path / "single.nii.gz")
    cases = {"nan.nii.gz": "NaN/Inf", "4d.nii.gz": "not a 3D image",
             "absent.nii.gz": "not found"}
    for name, expected in cases.items():
        with pytest.raises(InputError) as err:
            ingest_subject("x1", inputs_for(**{**good, "flair": tmp_path / name}),
                           tmp_path / name.split(".")[0], RULES)
        assert expected in str(err.value) and name in str(err.value)
        assert "x1" in str(err.value)
    report = ingest_subject("x1", inputs_for(**{**good, "flair": tmp_path / "single.nii.gz"}),
                            tmp_path / "ok", RULES)
    assert nib.load(tmp_path / "ok" / "flair.nii.gz").shape == data.shape
    assert any("singleton" in w for w in report["warnings"])
