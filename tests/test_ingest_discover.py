"""discover_brats on real BraTS 2023 files and on 2021-style names; the label
convention that BraTS names settle."""

from __future__ import annotations

import pandas as pd
import pytest

from btpipe.errors import ConfigError
from btpipe.ingest import discover_brats
from btpipe.ingest.discover import convention_for_case, detect_convention
from btpipe.labels import CONVENTIONS
from btpipe.samples import effective_labels


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


@pytest.mark.parametrize("name, convention", [
    ("BraTS20_Training_001_seg.nii.gz", "brats2021"),
    ("BraTS2021_00495_t1ce.nii.gz", "brats2021"),
    ("Brats18_2013_2_1_flair.nii.gz", "brats2021"),
    ("BraTS-GLI-00001-000-t1c.nii.gz", "brats2024"),    # 2023: 1-3, never 4
    ("BraTS-GLI-02060-100-seg.nii.gz", "brats2024"),    # 2024 post-treatment: 4 = cavity
    ("BraTS-MET-00002-000-t2f.nii", "brats2024"),
    ("BraTS-MEN-00004-000-seg.nii.gz", "brats2024"),
    ("BraTS-PED-00001-000-t1c.nii.gz", None),           # 2024 reuses 1-4 for other tissues
    ("BraTS-MEN-RT-0001-1-t1c.nii.gz", None),
    ("BraTS-GLI-00001-000_t1ce.nii.gz", None),          # mixed naming
    ("patient7_t1ce.nii.gz", None),                     # own naming says nothing
    ("BraTS-GLI-00001-000-t1c.mha", None),
])
def test_convention_for_case_from_the_name(name, convention):
    assert convention_for_case(f"/data/{name}") == convention
    assert convention is None or convention in CONVENTIONS


def test_detect_convention_needs_one_answer():
    assert detect_convention(["BraTS-GLI-00001-000-t1c.nii.gz",
                              "BraTS-GLI-02060-100-seg.nii.gz"]) == "brats2024"
    with pytest.raises(ConfigError, match="conflicting"):
        detect_convention(["BraTS-GLI-00001-000-t1c.nii.gz", "BraTS20_Training_001_t1ce.nii.gz"])
    with pytest.raises(ConfigError, match="patient7_t1ce.nii.gz"):
        detect_convention(["BraTS-GLI-00001-000-t1c.nii.gz", "patient7_t1ce.nii.gz"])
    with pytest.raises(ConfigError, match="no file names"):
        detect_convention([])


def test_labels_auto_from_a_brats_folder(testdata, tmp_path):
    config = {"brats_dir": str(testdata / "mri" / "brats-gli-00001-000"), "labels": "auto"}
    assert effective_labels(config) == "brats2024"
    assert effective_labels({**config, "labels": "brats2023"}) == "brats2023"
    mapping = {1: "NCR", 2: "ED", 4: "ET"}
    assert effective_labels({**config, "labels": mapping}) == mapping
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("subject\tt1\tt1ce\tt2\tflair\n"
                     "s1\ta_t1.nii.gz\tpatient_t1ce.nii.gz\tc.nii.gz\td.nii.gz\n")
    with pytest.raises(ConfigError, match="cannot choose .*patient_t1ce"):
        effective_labels({"samples": str(sheet), "labels": "auto"})
