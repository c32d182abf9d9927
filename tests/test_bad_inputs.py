"""The bad-input matrix: every case of docs/reliability.md, each asserting its exact handling.

Errors: `btpipe.ingest.step.ingest_step` records status 'failed' and an error naming the subject and
the offending file or series folder, and leaves no half-written subject. Documented handlings:
the warning text in ingest.json / the series table, or the flag of the later-stage function.
Sheet problems (duplicate ids, path separators and '..', misspelt or missing columns, ALIVE
text, negative days) are covered in tests/test_foundation.py and listed in the same table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from btpipe.errors import InputError
from btpipe.samples import subject_inputs
from btpipe.ingest.step import ingest_step

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "resources" / "ingest" / "sequence_rules.yaml"
DOC = REPO / "docs" / "reliability.md"
SEQS = ("t1", "t1ce", "t2", "flair")
CASES = {}


def case(case_id):
    """Register a matrix case (its id must appear in docs/reliability.md's table)."""
    def register(fn):
        CASES[case_id] = fn
        return fn
    return register


# --- data ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two small demo DICOM subjects (4 series each), built once."""
    from btpipe.demo.generate import make_subject

    root = tmp_path_factory.mktemp("demo")
    make_subject(root, "demo-001", 0, seed=0, voxel_scale=3.0)
    make_subject(root, "demo-002", 1, seed=0, voxel_scale=3.0)
    return root / "dicom"


@pytest.fixture(scope="module")
def small_nifti(testdata, tmp_path_factory):
    """A real-intensity block of the TCGA T1 (fast) and its affine."""
    src = nib.load(testdata / "mri" / "tcga-fg-6692" / "native" / "t1.nii.gz")
    data = np.asanyarray(src.dataobj)[96:128, 96:128, 8:18].astype(np.float32)
    return data, src.affine


class Ctx:
    def __init__(self, tmp_path, testdata, demo, small_nifti):
        self.tmp, self.testdata, self.demo = tmp_path, testdata, demo
        self.data, self.affine = small_nifti

    def copy_demo(self, name="demo-001"):
        dst = self.tmp / "dicom" / name
        shutil.copytree(self.demo / name, dst)
        return dst

    def series(self, folder, pattern):
        return next(p for p in folder.iterdir() if re.search(pattern, p.name))

    def ingest(self, subject, missing_sequence="fail", **paths):
        row = {"space": "native", **{k: str(v) for k, v in paths.items()}}
        out = self.tmp / "results" / "subjects" / subject / "nifti"
        record = ingest_step(subject, subject_inputs(row), out, RULES,
                             missing_sequence=missing_sequence)
        # What the caller returns is what was written (the JSON round trip).
        assert json.loads((out / "ingest.json").read_text())["status"] == record["status"]
        return record, out

    def nifti(self, name, data=None, affine=None):
        path = self.tmp / name
        nib.save(nib.Nifti1Image(self.data if data is None else data,
                                 self.affine if affine is None else affine), path)
        return path

    def good_niftis(self):
        return {s: self.nifti(f"{s}.nii.gz") for s in SEQS}


def failed(record, out, *names):
    """Failed, error names the subject and every given file/folder name; nothing half-written."""
    assert record["status"] == "failed", record
    error = record["error"]
    assert f"subject {record['subject']}" in error, error
    for name in names:
        assert name in error, f"{name!r} not in {error!r}"
    assert sorted(p.name for p in out.iterdir()) == ["ingest.json"]
    return error


def ok(record, out):
    assert record["status"] == "ok", record
    assert record["error"] is None
    return record


# --- DICOM -----------------------------------------------------------------------------------

@case("dicom_corrupt_alone")
def _(ctx):
    folder = ctx.tmp / "junk"
    folder.mkdir()
    (folder / "IM_0001.dcm").write_bytes(b"\x00not dicom\xff" * 200)
    error = failed(*ctx.ingest("c-junk", dicom_dir=folder), "IM_0001.dcm")
    assert "no DICOM files found" in error


@case("dicom_corrupt_beside_good")
def _(ctx):
    folder = ctx.copy_demo()
    (folder / "junk.dcm").write_bytes(b"\x00not dicom\xff" * 200)
    record = ok(*ctx.ingest("c-beside", dicom_dir=folder))
    assert set(record["sequences"]) == set(SEQS)
    assert any("not readable DICOM images were ignored: junk.dcm" in w for w in record["warnings"])


@case("dicom_corrupt_in_series")
def _(ctx):
    folder = ctx.copy_demo()
    t2 = ctx.series(folder, "t2_tse")
    (t2 / "IM_0006.dcm").write_bytes(b"\x00not dicom\xff" * 200)
    error = failed(*ctx.ingest("c-inseries", dicom_dir=folder), f"{t2.name}/IM_0006.dcm")
    assert "no series for sequence(s) t2" in error and "uneven slice spacing" in error


@case("dicom_truncated_alone")
def _(ctx):
    folder = ctx.tmp / "trunc"
    folder.mkdir()
    shutil.copy(ctx.testdata / "dicom" / "pydicom" / "MR_truncated.dcm", folder)
    failed(*ctx.ingest("c-trunc", dicom_dir=folder), "MR_truncated.dcm")


@case("dicom_truncated_in_series")
def _(ctx):
    folder = ctx.copy_demo()
    t2 = ctx.series(folder, "t2_tse")
    path = t2 / "IM_0006.dcm"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = failed(*ctx.ingest("c-trunc2", dicom_dir=folder), f"{t2.name}/IM_0006.dcm", t2.name)
    # Only the T2 is lost: dcm2niix's note about the file goes to its own series.
    assert "no series for sequence(s) t2 (" in error


@case("dicom_missing_slice")
def _(ctx):
    folder = ctx.copy_demo()
    t2 = ctx.series(folder, "t2_tse")
    n = len(list(t2.iterdir()))
    (t2 / f"IM_{n // 2:04d}.dcm").unlink()
    error = failed(*ctx.ingest("c-gap", dicom_dir=folder), t2.name)
    # The gapped series (and dcm2niix's resampled _Eq copy) are skipped, with the reason.
    assert "no series for sequence(s) t2" in error
    assert "uneven slice spacing (missing slices)" in error


@case("dicom_too_few_slices")
def _(ctx):
    folder = ctx.tmp / "slicecount"
    shutil.copytree(ctx.testdata / "dicom" / "dicom2nifti" / "failing" / "slicecount", folder,
                    ignore=shutil.ignore_patterns("*.nii.gz"))
    error = failed(*ctx.ingest("c-few", dicom_dir=folder), "in 001")
    assert "too few slices (2 < 10)" in error


@case("dicom_gantry_tilt_ct")
def _(ctx):
    """The real tilted series is CT: refused for its modality; its tilt is reported in the
    series table (tests/test_ingest_subject.py checks the _Tilt copy with CT-allowing rules)."""
    folder = ctx.tmp / "tilt"
    shutil.copytree(ctx.testdata / "dicom" / "dicom2nifti" / "failing" / "gantrytilting", folder)
    error = failed(*ctx.ingest("c-tiltct", dicom_dir=folder), "in 001")
    assert "modality CT" in error


@case("dicom_gantry_tilt_mr")
def _(ctx):
    """An MR T2 acquired with a 10 degree gantry tilt: slices sheared along y. dcm2niix writes a
    tilt-corrected copy (chosen, with a warning); the sheared original is skipped."""
    folder = ctx.copy_demo()
    t2 = ctx.series(folder, "t2_tse")
    for path in sorted(t2.iterdir()):
        ds = pydicom.dcmread(path)
        k = int(ds.InstanceNumber) - 1
        step = float(ds.SpacingBetweenSlices or ds.SliceThickness)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ipp[1] += k * step * np.tan(np.radians(10.0))
        ds.ImagePositionPatient = ipp
        ds.GantryDetectorTilt = 10.0
        ds.save_as(path)
    record = ok(*ctx.ingest("c-tiltmr", dicom_dir=folder))
    assert set(record["sequences"]) == set(SEQS)
    assert any("t2: gantry tilt corrected by dcm2niix" in w for w in record["warnings"])
    skipped = [s["reason"] for s in record["skipped"]]
    assert any(r.startswith("sheared geometry") for r in skipped), skipped
    table = pd.read_parquet(ctx.tmp / "results/subjects/c-tiltmr/nifti/series.parquet")
    assert any(str(r).startswith("sheared geometry") for r in table["skip_reason"])


def _relabel_patient(folder, patient_id, name):
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient_id, name
        ds.save_as(path)


@case("dicom_two_patients")
def _(ctx):
    folder = ctx.copy_demo()
    other = ctx.series(ctx.demo / "demo-002", "FLAIR")
    shutil.copytree(other, folder / other.name)
    _relabel_patient(folder / other.name, "OTHERPERSON42", "OTHER^PERSONNAME")
    error = failed(*ctx.ingest("c-2pat", dicom_dir=folder), other.name,
                   ctx.series(folder, "t2_tse").name)
    assert "mixes 2 patients" in error
    for phi in ("OTHERPERSON42", "PERSONNAME", "PLANTED"):  # no identity in the message
        assert phi not in error.upper()


@case("dicom_two_studies")
def _(ctx):
    """Another session of the same patient (demo-002's FLAIR shares the planted identity)."""
    folder = ctx.copy_demo()
    shutil.rmtree(ctx.series(folder, "tirm"))
    other = ctx.series(ctx.demo / "demo-002", "FLAIR")
    shutil.copytree(other, folder / other.name)
    error = failed(*ctx.ingest("c-2study", dicom_dir=folder), other.name)
    assert "mixes 2 studies (sessions) of one patient" in error


@case("dicom_missing_sequence_fail")
def _(ctx):
    folder = ctx.copy_demo()
    shutil.rmtree(ctx.series(folder, "tirm"))
    error = failed(*ctx.ingest("c-noflair", dicom_dir=folder), ctx.series(folder, "t2_tse").name)
    assert "no series for sequence(s) flair" in error and "series seen:" in error


@case("dicom_missing_sequence_continue")
def _(ctx):
    from btpipe.preprocess import load_sequences

    folder = ctx.copy_demo()
    shutil.rmtree(ctx.series(folder, "tirm"))
    record, out = ctx.ingest("c-cont", missing_sequence="continue", dicom_dir=folder)
    ok(record, out)
    assert record["missing_sequences"] == ["flair"]
    assert any(w.startswith("no series for sequence(s) flair") for w in record["warnings"])
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["t1.nii.gz", "t1ce.nii.gz",
                                                            "t2.nii.gz"]
    # Downstream still needs all four: preprocessing fails this subject, naming the file.
    with pytest.raises(InputError, match=r"subject c-cont, file .*flair\.nii\.gz: missing flair"):
        load_sequences("c-cont", out)


# --- NIfTI -----------------------------------------------------------------------------------

def _bad_nifti(ctx, subject, name, data, expected):
    paths = {**ctx.good_niftis(), "flair": ctx.nifti(name, data)}
    error = failed(*ctx.ingest(subject, **paths), name)
    assert expected in error


@case("nifti_nan")
def _(ctx):
    data = ctx.data.copy()
    data[3, 4, 5] = np.nan
    _bad_nifti(ctx, "n-nan", "nan.nii.gz", data, "1 NaN/Inf voxels")


@case("nifti_inf")
def _(ctx):
    data = ctx.data.copy()
    data[3, 4, 5], data[6, 7, 8] = np.inf, -np.inf
    _bad_nifti(ctx, "n-inf", "inf.nii.gz", data, "2 NaN/Inf voxels")


@case("nifti_4d")
def _(ctx):
    _bad_nifti(ctx, "n-4d", "fourd.nii.gz", np.stack([ctx.data] * 3, -1),
               "not a 3D image (shape (32, 32, 10, 3))")


@case("nifti_missing_file")
def _(ctx):
    paths = {**ctx.good_niftis(), "t1ce": ctx.tmp / "absent.nii.gz"}
    error = failed(*ctx.ingest("n-absent", **paths), "absent.nii.gz")
    assert "t1ce file not found" in error


def _accepted_geometry(ctx, subject, affine, codes):
    paths = {**ctx.good_niftis(), "t2": ctx.nifti(f"{subject}.nii.gz", affine=affine)}
    record, out = ctx.ingest(subject, **paths)
    ok(record, out)
    given, kept = nib.load(paths["t2"]), nib.load(out / "t2.nii.gz")
    # Ingest keeps the geometry as given (preprocessing reorients); the affine is exact.
    np.testing.assert_array_equal(kept.affine, given.affine)
    np.testing.assert_array_equal(np.asanyarray(kept.dataobj), np.asanyarray(given.dataobj))
    assert record["sequences"]["t2"]["orientation"] == codes == "".join(nib.aff2axcodes(affine))


@case("nifti_oblique")
def _(ctx):
    angle = np.radians(17.0)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                    [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 0.9, 5.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    affine = nib.load(ctx.nifti("obl_probe.nii.gz", affine=affine)).affine  # float32 on disk
    _accepted_geometry(ctx, "n-oblique", affine, "RAS")


@case("nifti_flipped")
def _(ctx):
    affine = np.diag([-1.0, -1.0, 5.0, 1.0])  # LPS-like storage: x and y flipped
    affine[:3, 3] = [15.0, 15.0, -20.0]
    _accepted_geometry(ctx, "n-flipped", affine, "LPS")


# --- later stages: masks, segmentations, labels ---------------------------------------------

def _atlas_volume(ctx, name, data, dtype=np.float32):
    path = ctx.tmp / name
    nib.save(nib.Nifti1Image(np.asarray(data, dtype), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _synthetic_subject(ctx, labels):
    """A 24^3 'atlas-space' subject: a brain ball with intensities, and a label map."""
    grid = np.indices((24, 24, 24)).astype(np.float32)
    rng = np.random.default_rng(0)
    brain = ((grid - 12) ** 2).sum(0) < 10 ** 2
    images = {s: _atlas_volume(ctx, f"{s}.nii.gz",
                               brain * (100 + 20 * i + rng.normal(0, 5, brain.shape)))
              for i, s in enumerate(SEQS)}
    return images, _atlas_volume(ctx, "seg.nii.gz", labels, np.uint8), brain


def _tumour_labels(with_et):
    labels = np.zeros((24, 24, 24), np.uint8)
    labels[8:16, 8:16, 8:16] = 2   # edema
    labels[10:14, 10:14, 10:14] = 1  # necrosis
    if with_et:
        labels[10:14, 10:14, 13:15] = 4
    return labels


@case("seg_no_tumour")
def _(ctx):
    from btpipe.features.radiomics import extract_subject
    from btpipe.features.slices import build_slice_bag

    images, seg, _ = _synthetic_subject(ctx, np.zeros((24, 24, 24), np.uint8))
    row = extract_subject("f-empty", images, seg, regions=("WT", "ET"), sequences=("t1",),
                          params_path=REPO / "resources/radiomics/params.yaml").iloc[0]
    assert row["WT_empty"] == 1 and row["ET_empty"] == 1
    feats = [c for c in row.index if c.startswith(("t1_WT_", "t1_ET_", "mask_WT_"))]
    assert feats and row[feats].isna().all()
    bag = build_slice_bag(images, seg, before=(1, 1, 1), after=(1, 1, 1), size=16)
    assert bag["empty_tumour"] == 1 and np.isnan(bag["coverage_mean"])
    assert bag["images"].shape == (9, 4, 16, 16) and (bag["tumour_area"] == 0).all()


@case("seg_no_et")
def _(ctx):
    from btpipe.features.radiomics import extract_subject
    from btpipe.features.slices import build_slice_bag

    images, seg, _ = _synthetic_subject(ctx, _tumour_labels(with_et=False))
    row = extract_subject("f-noet", images, seg, regions=("WT", "ET"), sequences=("t1",),
                          params_path=REPO / "resources/radiomics/params.yaml").iloc[0]
    assert row["WT_empty"] == 0 and row["ET_empty"] == 1
    et = [c for c in row.index if c.startswith(("t1_ET_", "mask_ET_"))]
    wt = [c for c in row.index if c.startswith("t1_WT_")]
    assert et and row[et].isna().all() and row[wt].notna().all()
    bag = build_slice_bag(images, seg, before=(1, 1, 1), after=(1, 1, 1), size=16)
    assert bag["empty_tumour"] == 0 and np.isfinite(bag["coverage_mean"])


@case("brain_mask_empty_reference")
def _(ctx):
    """An all-zero reference brain mask: Dice 0 in cohort/qc.parquet, no crash."""
    from btpipe.preprocess.step import qc_cohort_step

    preproc = ctx.tmp / "results" / "subjects" / "m-empty" / "preproc"
    (preproc / "reference").mkdir(parents=True)
    (preproc / "qc.json").write_text(json.dumps({"subject": "m-empty", "flags": []}))
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), preproc / "brain_mask.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(mask), np.eye(4)),
             preproc / "reference" / "brain_mask.nii.gz")
    frame = qc_cohort_step([preproc / "qc.json"], ["m-empty"], [preproc / "brain_mask.nii.gz"],
                           {"m-empty": preproc / "reference" / "brain_mask.nii.gz"},
                           ctx.tmp / "qc.parquet")
    assert frame.loc[0, "brain_mask_dice_reference"] == 0.0


@case("brain_mask_empty_skullstrip")
def _(ctx):
    """deepbet returning nothing: the plausibility check names why (preprocessing then falls
    back to the atlas mask and flags skullstrip_fallback in qc.json)."""
    from btpipe.preprocess.skullstrip import plausibility

    problems = plausibility(np.zeros((20, 20, 20), np.uint8), (1.0, 1.0, 1.0))
    assert any("brain volume 0 ml outside [700, 2200]" in p for p in problems)
    assert any("no dominant component (0 components" in p for p in problems)


@case("brain_mask_empty_radiomics")
def _(ctx):
    from btpipe.features.radiomics import extract_subject

    images, seg, _ = _synthetic_subject(ctx, _tumour_labels(with_et=True))
    mask = _atlas_volume(ctx, "brain_mask.nii.gz", np.zeros((24, 24, 24)), np.uint8)
    with pytest.raises(InputError, match=r"subject f-nobrain, file .*brain_mask\.nii\.gz: "
                                         r"brain mask is empty"):
        extract_subject("f-nobrain", images, seg, regions=("WT",), sequences=("t1",),
                        brain_mask_path=mask, include_shape_location=False)


def _identity_preproc(ctx, shape):
    from btpipe.preprocess.register import write_identity

    preproc = ctx.tmp / "results" / "subjects" / "l-sub" / "preproc"
    (preproc / "transforms").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), preproc / "brain_mask.nii.gz")
    write_identity(preproc / "transforms" / "t1ce_to_atlas.mat")
    return preproc


@case("labels_outside_convention")
def _(ctx):
    from btpipe.preprocess.step import reference_to_atlas_step

    labels = _tumour_labels(with_et=False)
    labels[11, 11, 11] = 3  # BraTS 2023's ET value in a brats2021 cohort
    native = ctx.tmp / "expert_seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), native)
    preproc = _identity_preproc(ctx, labels.shape)
    out = preproc / "reference" / "seg.nii.gz"
    with pytest.raises(InputError) as err:
        reference_to_atlas_step(native, preproc, out, labels="brats2021")
    message = str(err.value)
    assert "subject l-sub" in message and "expert_seg.nii.gz" in message
    assert "values [3] outside the label convention 'brats2021'" in message
    assert not out.exists()
    # The same file under the convention that defines 3 goes through, values kept.
    reference_to_atlas_step(native, preproc, out, labels="brats2023", subject="l-sub")
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj), labels)


@case("labels_outside_convention_score")
def _(ctx):
    from btpipe.segment.metrics import score_files

    labels = _tumour_labels(with_et=True)
    ref = ctx.tmp / "ref.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), ref)
    bad = labels.copy()
    bad[0, 0, 0] = 7
    pred = ctx.tmp / "pred_bad.nii.gz"
    nib.save(nib.Nifti1Image(bad, np.eye(4)), pred)
    with pytest.raises(InputError, match=r"file .*pred_bad\.nii\.gz: prediction holds label "
                                         r"values \[7\] outside convention 'brats2021'"):
        score_files(pred, ref, labels="brats2021")


# --- the matrix --------------------------------------------------------------------------------

@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_matrix(case_id, tmp_path, testdata, demo, small_nifti):
    CASES[case_id](Ctx(tmp_path, testdata, demo, small_nifti))


def _doc_case_ids() -> set[str]:
    """Case ids in the first column of docs/reliability.md's tables (`id` in backticks)."""
    ids = set()
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`([A-Za-z0-9_:.\[\]/-]+)`\s*\|", line)
        if match:
            ids.add(match.group(1))
    return ids


def test_reliability_doc_lists_every_case():
    documented = _doc_case_ids()
    missing = sorted(set(CASES) - documented)
    assert not missing, f"docs/reliability.md lacks rows for {missing}"
    # Rows naming tests elsewhere must name tests that exist.
    for ref in (i for i in documented if "::" in i):
        path, name = ref.split("::")
        assert re.search(rf"def {re.escape(name.split('[')[0])}\(",
                         (REPO / path).read_text()), ref
    # Data lost is zero in every row of the tables.
    for line in DOC.read_text().splitlines():
        if re.match(r"^\|\s*`", line):
            assert line.rstrip().rstrip("|").split("|")[-1].strip() == "0", line


# --- one run of the workflow: bad subjects fail alone ---------------------------------------

@pytest.mark.integration
@pytest.mark.slow
def test_snakemake_ingest_mixed_cohort(tmp_path, testdata, small_nifti):
    from pipeline_helpers import snakemake

    from btpipe.config import deep_update

    data, affine = small_nifti
    native = testdata / "mri" / "tcga-fg-6692" / "native"
    inputs = tmp_path / "inputs"
    (inputs / "trunc").mkdir(parents=True)
    shutil.copy(testdata / "dicom" / "pydicom" / "MR_truncated.dcm", inputs / "trunc")
    nan = data.copy()
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), inputs / "nan_flair.nii.gz")
    for seq in SEQS:
        nib.save(nib.Nifti1Image(data, affine), inputs / f"small_{seq}.nii.gz")
    small = {s: str(inputs / f"small_{s}.nii.gz") for s in SEQS}
    rows = [
        {"subject": "good", **{s: str(native / f"{s}.nii.gz") for s in SEQS}},
        {"subject": "nofile", **small, "t1": str(inputs / "absent_t1.nii.gz")},
        {"subject": "nanimg", **small, "flair": str(inputs / "nan_flair.nii.gz")},
        {"subject": "truncdcm", "dicom_dir": str(inputs / "trunc")},
    ]
    pd.DataFrame(rows, columns=["subject", "dicom_dir", *SEQS]).to_csv(
        tmp_path / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = deep_update(config, {
        "results_dir": "results", "samples": str(tmp_path / "samples.tsv"),
        "demo": {"enabled": False},
        "survival": {"enabled": False},  # the sheet has no outcome columns
        # no expert labels to train on: a model would segment them (ingest runs alone here)
        "segmentation": {"mode": "pretrained", "model_path": str(tmp_path / "model.pt")},
        "ingest": {"rules": str(RULES)},
        "atlas": {"path": str(REPO / "resources/atlas/sri24/t1_brain.nii.gz")},
    })
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--keep-going", "ingest")
    assert proc.returncode == 0
    table = pd.read_parquet(tmp_path / "results" / "cohort" / "ingest.parquet")
    status = dict(zip(table["subject"], table["status"]))
    assert status == {"good": "ok", "nofile": "failed", "nanimg": "failed", "truncdcm": "failed"}
    errors = dict(zip(table["subject"], table["error"]))
    for subject, name in (("nofile", "absent_t1.nii.gz"), ("nanimg", "nan_flair.nii.gz"),
                          ("truncdcm", "MR_truncated.dcm")):
        assert f"subject {subject}" in errors[subject] and name in errors[subject]
    good = tmp_path / "results" / "subjects" / "good" / "nifti"
    assert sorted(p.name for p in good.glob("*.nii.gz")) == sorted(f"{s}.nii.gz" for s in SEQS)
    partial = [p for p in (tmp_path / "results").rglob("*")
               if p.name.startswith((".tmp-", ".ingest-", ".dcm2niix-"))]
    assert not partial, partial
