"""Sequence classification on synthetic series tables (several vendors' habits)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from btpipe.errors import ConfigError
from btpipe.ingest import classify_series, load_rules

RULES = Path(__file__).resolve().parents[1] / "resources" / "ingest" / "sequence_rules.yaml"


def series(number, description, acq="2D", spacing=(1.0, 1.0, 5.0), tr=None, te=None, ti=None,
           agent=False, protocol=None, image_type="ORIGINAL\\PRIMARY\\M", n_slices=24,
           n_volumes=1, warnings=(), modality="MR"):
    return {"series_number": number, "series_description": description,
            "protocol_name": protocol, "acquisition_type": acq, "modality": modality,
            "image_type": image_type, "voxel_volume": float(pd.Series(spacing).prod()),
            "repetition_time": tr, "echo_time": te, "inversion_time": ti,
            "contrast_agent": agent, "n_slices": n_slices, "n_volumes": n_volumes,
            "file": f"s{number}.nii.gz", "warnings": list(warnings)}


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES)


def classify(rows, rules):
    table = classify_series(pd.DataFrame(rows), rules)
    return table.set_index("series_number")


@pytest.mark.parametrize("description,expected", [
    # Siemens
    ("t1_mprage_sag_p2_iso", "t1"), ("t1_se_tra", "t1"), ("t2_tse_tra_512", "t2"),
    ("t2_tirm_tra_dark-fluid", "flair"), ("t1_mprage_sag_p2_iso_post", "t1ce"),
    ("t1_vibe_fs_tra_+c", "t1ce"), ("t2_space_dark-fluid_sag", "flair"),
    # GE
    ("Sag 3D BRAVO", "t1"), ("AX T1 FLAIR", "t1"), ("AX T1 FLAIR +C", "t1ce"),
    ("Ax T2 FRFSE", "t2"), ("Ax T2 FLAIR", "flair"), ("3D FSPGR post gd", "t1ce"),
    ("SAG CUBE FLAIR", "flair"),
    # Philips
    ("T1W_3D_TFE", "t1"), ("T1W_3D_TFE_Gd", "t1ce"), ("T2W_TSE", "t2"), ("T2W_FLAIR", "flair"),
    ("sT1W_3D_FFE CE", "t1ce"),
    # German / Italian / other habits
    ("T1 MPRAGE nach KM", "t1ce"), ("T1_se_tra_KM", "t1ce"), ("T1 se kontrast", "t1ce"),
    ("T1 ohne KM", "t1"), ("T1 pre contrast", "t1"), ("T1 SE MDC", "t1ce"),
    ("T1 spgr contrast", "t1ce"),
])
def test_descriptions_across_vendors(rules, description, expected):
    table = classify([series(1, description)], rules)
    assert table.loc[1, "sequence"] == expected
    assert table.loc[1, "chosen_as"] == expected


@pytest.mark.parametrize("description,reason", [
    ("localizer", "localizer"), ("AAHead_Scout_32ch-head-coil", "localizer"),
    ("3-Plane Loc", "localizer"), ("Survey_32ch_HeadCoil", "localizer"),
    ("ep2d_diff_3scan_trace_p2_ADC", "diffusion"), ("DWI b1000", "diffusion"),
    ("Ax DTI", "diffusion"), ("ep2d_perf", "perfusion"), ("DSC_perfusion", "perfusion"),
    ("t1_mprage_sag_p2_iso_MPR_Tra", "reformat"), ("MIP t1 post", "reformat"),
    ("SWI_Images", "susceptibility"), ("t2_fl2d_tra_hemo", "susceptibility"),
])
def test_exclusions(rules, description, reason):
    table = classify([series(1, description)], rules)
    assert table.loc[1, "chosen_as"] is None
    assert reason in table.loc[1, "skip_reason"]


def test_derived_image_type_and_contrast_field(rules):
    table = classify([
        series(1, "T1 post", image_type="DERIVED\\SECONDARY\\SUBTRACTION"),
        series(2, "t1_se_tra", agent=True),          # agent in header, text says nothing
        series(3, "t1_se_tra pre", agent=True),       # text says pre: not post-contrast
    ], rules)
    assert "derived" in table.loc[1, "skip_reason"]
    assert table.loc[2, "chosen_as"] == "t1ce"
    assert table.loc[3, "chosen_as"] == "t1"


def test_parameters_classify_undescribed_series(rules):
    table = classify([
        series(1, "sequence A", tr=9000, te=90, ti=2500),
        series(2, "sequence B", tr=4500, te=100),
        series(3, "sequence C", tr=550, te=12),
        series(4, "sequence D", tr=600, te=10, agent=True),
        series(5, "sequence E", tr=2500, te=15),    # PD-like: nothing fits
    ], rules)
    assert table["chosen_as"].to_dict() == {1: "flair", 2: "t2", 3: "t1", 4: "t1ce", 5: None}
    assert set(table.loc[[1, 2, 3, 4], "match_by"]) == {"parameters"}
    assert table.loc[5, "skip_reason"] == "no sequence rule matched"


def test_tie_break_3d_then_voxel_volume_then_latest_series(rules):
    table = classify([
        series(3, "t1_se_tra_post", acq="2D", spacing=(0.5, 0.5, 3.0)),
        series(5, "t1_mprage_post", acq="3D", spacing=(1.0, 1.0, 1.0)),
        series(6, "t1_mprage_post", acq="3D", spacing=(0.9, 0.9, 0.9)),
        series(8, "t1_mprage_post", acq="3D", spacing=(0.9, 0.9, 0.9)),
        series(2, "t2_tse_tra", spacing=(0.5, 0.5, 5.0)),
        series(4, "t2_tse_cor", spacing=(0.5, 0.5, 4.0)),
    ], rules)
    assert table["chosen_as"].dropna().to_dict() == {8: "t1ce", 4: "t2"}
    for number in (3, 5, 6):
        assert "series 8 preferred" in table.loc[number, "skip_reason"]
    assert "series 4 preferred" in table.loc[2, "skip_reason"]


def test_unusable_series(rules):
    table = classify([
        series(1, "t1_mprage", n_slices=2),
        series(2, "t2_tse", n_volumes=3),
        series(3, "t2_flair", warnings=["ImageOrientationPatient varies between slices"]),
        series(4, "t1 post", modality="CT"),
        {**series(5, "t1_mprage"), "file": None, "warnings": ["not converted by dcm2niix"]},
    ], rules)
    reasons = table["skip_reason"].to_dict()
    assert reasons[1] == "too few slices (2 < 10)"
    assert reasons[2] == "4D series (3 volumes)"
    assert reasons[3].startswith("inconsistent slice orientation")
    assert reasons[4].startswith("modality CT")
    assert reasons[5] == "not converted"
    assert table["chosen_as"].isna().all()


def test_bad_rules_files_raise_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("order: [t1]\nsequences:\n  t1:\n    patterns: ['(unclosed']\n")
    with pytest.raises(ConfigError, match="bad regular expression"):
        load_rules(bad)
    bad.write_text("sequences:\n  t3:\n    patterns: [x]\n")
    with pytest.raises(ConfigError, match="unknown sequence"):
        load_rules(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_rules(tmp_path / "none.yaml")
