"""Partial outcomes: who is cross-validated, who is only predicted, and why; challenge CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btpipe.errors import ConfigError
from btpipe.survival import cohort, submission
from btpipe.survival.data import prepare_like, prepare_table
from btpipe.survival.registry import resolve_params


def _table():
    return pd.DataFrame({
        "subject": ["a", "b", "c", "d", "e", "f", "g"],
        "survival_days": ["300", "ALIVE (120 days later)", None, "400", "abc", "500", "610"],
        "age": [50, 60, 70, None, 55, 65, 45],
        "extent_of_resection": ["GTR", "STR", "GTR", "NA", "GTR", "GTR", "STR"],
        cohort.CLINICAL_ROW: [True, True, True, True, True, False, True],
    })


def test_split_cohort_gives_each_left_out_subject_its_reason():
    develop, new, excluded = cohort.split_cohort(
        _table(), "survival_days", None, {"g": ["registration_failed"]},
        excluded_flags=["registration_failed"], subset={"extent_of_resection": ["GTR", "NA"]})
    assert list(develop["subject"]) == ["a", "d"]
    assert cohort.CLINICAL_ROW not in develop.columns
    reasons = {e["subject"]: e["reason"] for e in excluded}
    assert reasons == {"b": cohort.OUTSIDE_SUBSET, "c": cohort.MISSING_TIME,
                       "e": cohort.INVALID_OUTCOME, "f": cohort.NO_OUTCOME_ROW,
                       "g": cohort.QC_FLAG}
    assert sorted(new["subject"]) == sorted(reasons)
    detail = {e["subject"]: e["detail"] for e in excluded}
    assert "STR" in detail["b"] and "registration_failed" in detail["g"]


def test_event_column_missing_or_invalid_is_a_reason_not_a_crash():
    table = pd.DataFrame({"subject": ["a", "b", "c"], "days": [10, 20, 30],
                          "dead": ["1", None, "maybe"]})
    develop, _, excluded = cohort.split_cohort(table, "days", "dead", {})
    assert list(develop["subject"]) == ["a"]
    assert [e["reason"] for e in excluded] == [cohort.MISSING_EVENT, cohort.INVALID_OUTCOME]


def test_new_subjects_are_encoded_with_the_training_levels():
    """The reference level of a categorical covariate comes from the training table, so a new
    subject's one-hot columns mean what the model learnt."""
    train = pd.DataFrame({"subject": ["a", "b", "c", "d"], "days": [100, 200, 300, 400],
                          "age": [50, 60, 70, 80], "eor": ["GTR", "GTR", "STR", "NA"],
                          "f1": [0.1, 0.2, 0.3, 0.4]})
    X, _, _ = prepare_table(train, "days", None, ["age", "eor"], ["f1"])
    new = pd.DataFrame({"subject": ["n1", "n2", "n3"], "age": [40, None, 90],
                        "eor": ["STR", "STR", "biopsy"], "f1": [0.5, 0.6, 0.7]})
    X_new, ids = prepare_like(new, X, ["age", "eor"], ["f1"])
    assert list(X_new.columns) == list(X.columns) == ["age", "eor=NA", "eor=STR", "f1"]
    assert list(ids) == ["n1", "n2", "n3"]
    assert X_new.loc["n1", "eor=STR"] == 1 and X_new.loc["n1", "eor=NA"] == 0
    assert X_new.loc["n3", ["eor=NA", "eor=STR"]].sum() == 0   # unseen level: the reference
    assert np.isnan(X_new.loc["n2", "age"])                   # imputed by the model pipeline


def test_class_cutoffs_in_days_replace_months():
    params = resolve_params({"class_cutoffs_days": [304.4, 456.6]})
    assert np.allclose(params["class_cutoffs_months"], [10, 15], atol=1e-3)
    assert resolve_params({})["class_cutoffs_months"] == [10, 15]


def test_submission_covers_out_of_fold_and_new_subjects():
    oof = pd.DataFrame({"subject": ["BraTS20_Training_001", "BraTS20_Training_001",
                                    "BraTS20_Training_002"],
                        "repeat": [0, 1, 0], "predicted_days": [100.0, 200.0, 310.4]})
    new = pd.DataFrame({"subject": ["BraTS20_Validation_001"], "predicted_days": [99.6]})
    table = submission.submission_table(oof, new)
    assert list(table.columns) == ["BraTS20ID", "Survival_days"]
    assert table.set_index("BraTS20ID")["Survival_days"].to_dict() == {
        "BraTS20_Training_001": 150.0, "BraTS20_Training_002": 310.0,
        "BraTS20_Validation_001": 100.0}
    assert submission.is_brats_cohort(["BraTS-GLI-00001-000", "BraTS20_Training_001"])
    assert not submission.is_brats_cohort(["demo-000"])
    assert submission.id_column(["BraTS-GLI-00001-000"]) == "subject"


def test_clinical_tables_stack_and_mark_subjects_without_a_row(tmp_path):
    from btpipe.ingest.discover import join_clinical

    (tmp_path / "train.csv").write_text("Brats20ID,Age,Survival_days\nA,50,300\nB,60,\n")
    (tmp_path / "valid.csv").write_text("BraTS20ID,Age\nC,70\n")
    frame = join_clinical(pd.DataFrame({"subject": ["A", "B", "C", "D"]}),
                          [tmp_path / "train.csv", tmp_path / "valid.csv"])
    assert frame.set_index("subject")["_clinical_row"].to_dict() == \
        {"A": True, "B": True, "C": True, "D": False}
    assert frame.set_index("subject")["age"].to_dict()["C"] == 70
    (tmp_path / "dupe.csv").write_text("Brats20ID,Age\nA,51\n")
    with pytest.raises(ConfigError, match="more than once"):
        join_clinical(pd.DataFrame({"subject": ["A"]}), [tmp_path / "train.csv", tmp_path / "dupe.csv"])


def test_config_problems_name_missing_columns_and_unlabelled_subjects(tmp_path):
    from btpipe.samples import config_problems

    sheet = tmp_path / "samples.tsv"
    sheet.write_text("subject\tt1\tseg\tsurvival_days\nx\tx.nii\tx_seg.nii\t10\ny\ty.nii\t\t20\n")
    frame = pd.DataFrame({"subject": ["x", "y"], "seg": ["x_seg.nii", None],
                          "survival_days": [10, 20]})
    config = {"samples": str(sheet), "demo": {"enabled": False},
              "survival": {"time": "survival_days", "event": "event", "covariates": ["age"]},
              "segmentation": {"mode": "provided", "model_path": None}}
    problems = config_problems(config, frame)
    assert f"survival.event: column 'event' is not in {sheet}" in problems
    assert f"survival.covariates: column 'age' is not in {sheet}" in problems
    assert any("1 subject(s) have no expert labels (seg): y" in p for p in problems)
    config["survival"].update(event=None, covariates=[])
    config["segmentation"]["model_path"] = "model.pt"
    assert config_problems(config, frame) == []
