"""discover_brats on real BraTS 2023 files and on 2021-style names."""

from __future__ import annotations

import pandas as pd
import pytest

from btpipe.errors import ConfigError
from btpipe.ingest import discover_brats


def test_brats2023_case_folder(testdata):
    case = testdata / "mri" / "brats-gli-00001-000"
    frame = discover_brats(case.parent)
    row = frame.set_index("subject").loc["BraTS-GLI-00001-000"]
    assert row["t1"].endswith("-t1n.nii.gz") and row["t1ce"].endswith("-t1c.nii.gz")
    assert row["t2"].endswith("-t2w.nii.gz") and row["flair"].endswith("-t2f.nii.gz")
    assert row["seg"] is None and row["space"] == "atlas"
    # the folder itself may be given, too
    assert list(discover_brats(case)["subject"]) == ["BraTS-GLI-00001-000"]


def test_brats2021_names_with_clinical_table(testdata, tmp_path):
    src = testdata / "mri" / "brats-gli-00001-000"
    real = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    cases = ["BraTS20_Training_001", "BraTS20_Training_008", "BraTS20_Training_999"]
    for case in cases:
        folder = tmp_path / "brats" / case
        folder.mkdir(parents=True)
        for ours, theirs in real.items():
            (folder / f"{case}_{ours}.nii.gz").symlink_to(
                src / f"BraTS-GLI-00001-000-{theirs}.nii.gz")
    (tmp_path / "brats" / cases[0] / f"{cases[0]}_seg.nii.gz").symlink_to(
        src / "BraTS-GLI-00001-000-t1c.nii.gz")
    (tmp_path / "brats" / "notes").mkdir()        # not a case: ignored
    clinical = testdata / "clinical" / "brats2020_survival_info.csv"
    frame = discover_brats(tmp_path / "brats", clinical).set_index("subject")
    assert list(frame.index) == cases
    assert frame.loc[cases[0], "seg"].endswith("_seg.nii.gz")
    assert frame.loc[cases[1], "seg"] is None
    truth = pd.read_csv(clinical, dtype=str, keep_default_na=False).set_index("Brats20ID")
    for case in cases[:2]:
        assert frame.loc[case, "age"] == pytest.approx(float(truth.loc[case, "Age"]))
        assert frame.loc[case, "survival_days"] == truth.loc[case, "Survival_days"]
        assert frame.loc[case, "extent_of_resection"] == truth.loc[case, "Extent_of_Resection"]
    assert frame.loc[cases[1], "extent_of_resection"] == "NA"     # a category, not missing
    assert frame.loc[cases[2], "survival_days"] is None          # not in the table


def test_alive_text_is_kept(testdata, tmp_path):
    clinical = testdata / "clinical" / "brats2020_survival_info.csv"
    table = pd.read_csv(clinical, dtype=str, keep_default_na=False)
    alive = table[table["Survival_days"].str.startswith("ALIVE")].iloc[0]
    case = alive["Brats20ID"]
    folder = tmp_path / case
    folder.mkdir()
    src = testdata / "mri" / "brats-gli-00001-000"
    for ours, theirs in {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}.items():
        (folder / f"{case}_{ours}.nii.gz").symlink_to(src / f"BraTS-GLI-00001-000-{theirs}.nii.gz")
    frame = discover_brats(tmp_path, clinical)
    assert frame.loc[0, "survival_days"] == alive["Survival_days"]


def test_no_cases_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no case folder"):
        discover_brats(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        discover_brats(tmp_path / "missing")
