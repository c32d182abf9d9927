"""convert_dicom_dir against reference conversions of real DICOM data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from btpipe.errors import InputError
from btpipe.ingest import convert_dicom_dir
from btpipe.ingest.convert import SERIES_COLUMNS

# dicom2nifti anatomical series and compressed transfer syntaxes (folder -> ground truth)
D2N_CASES = [
    "anatomical/001", "ge/anatomical/001", "siemens/anatomical/001",
    "philips/anatomical/001", "philips_enhanced/anatomical/001",
    "siemens_multiframe/anatomical/001", "hitachi/anatomical/001",
    "hyperfine/anatomical/001", "generic/anatomical/001",
    "generic/anatomical/002_non_isotropic", "generic/compressed/001",
    "generic/compressed_jpeg/001", "generic/compressed_jpegls/001",
    "generic/compressed_j2k/001", "generic/compressed_rle/001",
]


def ref_prefix(folder_name: str) -> str:
    """dcm_qa In/Orientation folder -> Ref file prefix (protocol name).

    'axasc35' -> 'ax_asc_35sl_', 'cordesc36' -> 'cor_desc_36sl_',
    'AxAsc36mb2a' / 'AxInt36mb' (multiband) -> 'fMRI_MB_asc_' / 'fMRI_MB_int_'.
    Two folders can share a protocol (axasc36, axasc36b): the series number,
    which ends every Ref name, tells them apart.
    """
    m = re.fullmatch(r"(ax|cor|sag)(asc|desc|int)(\d+)(mb\w*|b)?", folder_name, re.I)
    assert m, folder_name
    plane, order, slices, extra = m.group(1).lower(), m.group(2).lower(), m.group(3), m.group(4)
    if extra and extra.lower().startswith("mb"):
        return f"fMRI_MB_{order}_"
    return f"{plane}_{order}_{slices}sl_"


@pytest.mark.slow
def test_dcm_qa_orientation_matches_reference(testdata, tmp_path):
    root = testdata / "dicom" / "dcm_qa_siemens"
    folders = sorted(p for p in (root / "In" / "Orientation").glob("*/*") if p.is_dir())
    assert len(folders) >= 20
    refs_used = set()
    for folder in folders:
        table = convert_dicom_dir(folder, tmp_path / folder.name)
        assert len(table) == 1, folder
        row = table.iloc[0]
        ref = root / "Ref" / f"{ref_prefix(folder.name)}{int(row['series_number'])}.nii"
        assert ref.exists(), (folder, ref)
        assert row["protocol_name"] + "_" == ref_prefix(folder.name) or "MB" in ref.name
        ours, theirs = nib.load(row["file"]), nib.load(ref)
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
        np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
        # sidecar timing fields agree with dcm2niix's reference sidecar
        ref_meta = json.loads(ref.with_suffix(".json").read_text())
        our_meta = json.loads(Path(row["sidecar"]).read_text())
        for key in ("RepetitionTime", "EchoTime", "SliceTiming"):
            np.testing.assert_allclose(our_meta[key], ref_meta[key])
        refs_used.add(ref.name)
    assert len(refs_used) == len(folders)  # every folder found its own reference


def canonical(img):
    """Data and affine in the closest RAS orientation (for world-space comparison)."""
    img = nib.as_closest_canonical(img)
    data = np.asanyarray(img.dataobj)
    return np.squeeze(data.astype(np.float64)), img.affine


@pytest.mark.parametrize("case", D2N_CASES)
def test_dicom2nifti_series_match_ground_truth_in_world_space(testdata, tmp_path, case):
    folder = testdata / "dicom" / "dicom2nifti" / case
    truth = folder.parent / f"{folder.name}_ground_truth.nii.gz"
    table = convert_dicom_dir(folder, tmp_path)
    assert len(table) == 1 and table["file"].notna().all()
    row = table.iloc[0]
    ours, ours_aff = canonical(nib.load(row["file"]))
    ref, ref_aff = canonical(nib.load(truth))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours_aff, ref_aff, atol=1e-3)
    if case.startswith("philips_enhanced"):
        # dicom2nifti's ground truth stores stored value x RescaleSlope x ScaleSlope;
        # dcm2niix keeps the stored integers (-p y with these tags: no float scaling).
        meta = json.loads(Path(row["sidecar"]).read_text())
        factor = meta["PhilipsRescaleSlope"] * meta["PhilipsScaleSlope"]
        np.testing.assert_allclose(ours * factor, ref, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    assert row["orientation"] == "".join(nib.aff2axcodes(nib.load(row["file"]).affine))
    assert row["n_slices"] >= 1 and row["vendor"] != "" and set(SERIES_COLUMNS) <= set(table)


def test_truncated_dicom_is_reported(testdata, tmp_path):
    src = testdata / "dicom" / "pydicom"
    # Alone, the truncated file cannot be converted: InputError naming it.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "MR_truncated.dcm").write_bytes((src / "MR_truncated.dcm").read_bytes())
    with pytest.raises(InputError) as err:
        convert_dicom_dir(alone, tmp_path / "out1", subject="s1")
    assert "MR_truncated.dcm" in str(err.value) and "s1" in str(err.value)
    # Beside intact copies of the same series, the series converts but carries a warning.
    table = convert_dicom_dir(src, tmp_path / "out2")
    warnings = [w for ws in table["warnings"] for w in ws]
    assert any("truncated DICOM file MR_truncated.dcm" in w for w in warnings)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(InputError, match="not found"):
        convert_dicom_dir(tmp_path / "nope", tmp_path / "out", subject="s2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files found"):
        convert_dicom_dir(tmp_path / "empty", tmp_path / "out", subject="s2")


def test_failing_series_carry_warnings(testdata, tmp_path):
    table = convert_dicom_dir(testdata / "dicom" / "dicom2nifti" / "failing", tmp_path)
    by_file = {Path(f).name: w for f, w in zip(table["file"], table["warnings"])}
    assert any("gantry tilt corrected" in w for w in by_file["series-4_Tilt_1.nii.gz"])
    tilted = [w for name, ws in by_file.items() if "Tilt" not in name for w in ws
              if "uncorrected gantry-tilt" in w]
    assert tilted  # the sheared original is flagged
    two_slices = [ws for ws in by_file.values() if "only 2 slice(s): not a volume" in ws]
    assert len(two_slices) == 2  # slicecount and sliceorientation


def test_cli_matches_in_process_conversion(testdata, tmp_path):
    """`btpipe convert` (dcm2niix started before the imports, outputs compressed
    by two threads) writes the same bytes as the one-thread in-process call."""
    import subprocess
    import sys

    src = testdata / "dicom" / "dicom2nifti" / "generic" / "anatomical"
    convert_dicom_dir(src, tmp_path / "inproc")
    cli = Path(sys.executable).with_name("btpipe")
    proc = subprocess.run([str(cli), "convert", str(src), str(tmp_path / "cli"), "--threads", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    made = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert {"series.parquet", "series.csv"} <= set(made)
    assert not [name for name in made if name.startswith(".")]  # temp folder removed
    images = [name for name in made if name.endswith((".nii.gz", ".json"))]
    assert len(images) >= 4
    for name in images:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "inproc" / name).read_bytes()


def test_dcm2niix_run_left_early_is_stopped_and_removed(testdata, tmp_path):
    from btpipe.ingest.dcm2niix_process import Dcm2niixRun

    with Dcm2niixRun(testdata / "dicom" / "dcm_qa_siemens" / "In", tmp_path) as run:
        folder, proc = run.folder, run._proc
    assert proc.returncode is not None and not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_during_the_header_scan_leaves_no_temporary_folder(testdata, tmp_path,
                                                                   monkeypatch):
    from btpipe.ingest import convert as conv

    def broken_scan(_dicom_dir):
        raise OSError("disk gone")

    monkeypatch.setattr(conv, "scan_headers", broken_scan)
    with pytest.raises(OSError, match="disk gone"):
        convert_dicom_dir(testdata / "dicom" / "dcm_qa_siemens" / "In", tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
