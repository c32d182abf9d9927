"""Where the demo cohort puts its files; shared by the generator and the DAG.

The DAG needs the subject list and input paths before the cohort exists (a
dry run on a clean clone), so they are fixed by this layout, not by the sheet.
"""

from __future__ import annotations

from pathlib import Path


def subject_ids(n: int) -> list[str]:
    return [f"demo-{i:03d}" for i in range(n)]


def dicom_dir(out_dir, subject) -> Path:
    return Path(out_dir) / "dicom" / subject


def truth_dir(out_dir, subject) -> Path:
    return Path(out_dir) / "truth" / subject


def truth_files(out_dir, subject) -> dict[str, Path]:
    base = truth_dir(out_dir, subject)
    return {"seg": base / "seg.nii.gz", "brain_mask": base / "brain_mask.nii.gz",
            "info": base / "truth.json"}


def sheet_path(out_dir) -> Path:
    return Path(out_dir) / "samples.tsv"


def expected_rows(out_dir, n: int) -> list[dict]:
    """Path columns of the demo sheet, relative to the sheet's folder."""
    rows = []
    for sid in subject_ids(n):
        rows.append({"subject": sid, "dicom_dir": f"dicom/{sid}",
                     "seg": f"truth/{sid}/seg.nii.gz",
                     "brain_mask": f"truth/{sid}/brain_mask.nii.gz", "space": "native"})
    return rows
