"""A BraTS release end to end: BraTS names, expert labels, a partial survival table.

Six BraTS-2020-named subjects with labels and a survival_info.csv with rows
for four of them (one censored 'ALIVE (N days later)', one with extent of
resection 'NA'), run through the shipped BraTS 2020 recipe shrunk to a tiny
budget. Survival cross-validation uses the four with outcomes; the final
models predict the other two, and the challenge-format CSV covers all six.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from pipeline_helpers import REPO, copy_run, planned_jobs, snakemake, write_recipe_config

pytestmark = pytest.mark.integration

ATLAS_DIR = REPO / "resources" / "atlas" / "sri24"
TINY = {
    "atlas": {"spacing_mm": 3.0},
    "segmentation": {"folds": 2, "init_filters": 8, "roi_size": [32, 32, 32], "batch_size": 2,
                     "max_steps": 60, "val_every": 30, "learning_rate": 0.003, "tta": "none",
                     "num_workers": 0, "monitor_subjects": 2, "device": "cpu",
                     "et_min_volume_mm3": 0},
    "threads": {"preprocess": 1, "seg_train": 1, "segment": 1, "survival_image_model": 1},
    "radiomics": {"params": "resources/radiomics/params.yaml", "regions": ["WT", "TC", "ET"]},
    "slices": {"before": [1, 1, 1], "after": [1, 1, 1], "size": 32},
    "survival": {"folds": 2, "top_n": 5, "models": ["age_median", "cox"], "holdout_fraction": 0,
                 "n_permutations": 100, "horizons_days": [365]},
    "deterministic": True,
}


@pytest.fixture(scope="session")
def brats_folder(tmp_path_factory):
    """Six labelled BraTS 2020 cases and a survival table for the first four."""
    from btpipe.demo.brats import write_brats_folder, write_survival_info

    root = tmp_path_factory.mktemp("brats2020")
    data = root / "MICCAI_BraTS2020_TrainingData"
    cases = write_brats_folder(data, 6, ATLAS_DIR, naming="2020", seed=1)
    with_outcome = cases[:4]
    write_survival_info(data / "survival_info.csv", with_outcome, seed=1,
                        alive=(with_outcome[1]["subject"],),
                        unknown_resection=(with_outcome[2]["subject"],))
    return {"dir": data, "clinical": data / "survival_info.csv",
            "subjects": [c["subject"] for c in cases],
            "with_outcome": [c["subject"] for c in with_outcome]}


def recipe_config(workdir, brats_folder, overrides=None):
    from btpipe.config import deep_update

    return write_recipe_config(workdir, "brats2020_os.yaml", deep_update(
        {**TINY, "brats_dir": str(brats_folder["dir"]), "clinical": str(brats_folder["clinical"]),
         "results_dir": "results"}, overrides or {}))


@pytest.fixture(scope="session")
def brats_run(brats_folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("brats_run")
    recipe_config(workdir, brats_folder)
    snakemake(workdir)
    return {"workdir": workdir, "results": workdir / "results"}


def test_survival_cross_validates_the_subjects_with_outcomes(brats_run, brats_folder):
    results = brats_run["results"]
    folds = json.loads((results / "survival/folds.json").read_text())["folds"]
    tested = sorted(s for f in folds for s in f["test_ids"])
    assert tested == sorted(brats_folder["with_outcome"])
    table = pd.read_parquet(results / "survival/input.parquet")
    censored = table.loc[table["survival_days"].astype(str).str.startswith("ALIVE"), "subject"]
    assert list(censored) == [brats_folder["with_outcome"][1]]
    for model in ("age_median", "cox"):
        predictions = pd.read_parquet(results / f"survival/{model}/predictions.parquet")
        assert sorted(predictions["subject"]) == tested
        assert predictions["event"].sum() == 3          # one of four censored
        assert np.isfinite(predictions["predicted_days"]).all()


def test_subjects_without_outcomes_are_listed_and_predicted(brats_run, brats_folder):
    results = brats_run["results"]
    without = sorted(set(brats_folder["subjects"]) - set(brats_folder["with_outcome"]))
    excluded = json.loads((results / "survival/excluded.json").read_text())["excluded"]
    assert sorted(e["subject"] for e in excluded) == without
    assert {e["reason"] for e in excluded} == {"no outcome row"}
    for model in ("age_median", "cox"):
        new = pd.read_parquet(results / f"survival/{model}/predictions_new.parquet")
        assert sorted(new["subject"]) == without
        assert np.isfinite(new["risk"]).all() and (new["predicted_days"] > 0).all()
        assert set(new["risk_group"]) <= {"high", "low"}
        submission = pd.read_csv(results / f"survival/submission/{model}.csv")
        assert list(submission.columns) == ["BraTS20ID", "Survival_days"]
        assert sorted(submission["BraTS20ID"]) == sorted(brats_folder["subjects"])
        assert (submission["Survival_days"] > 0).all()
    html = (results / "report/report.html").read_text()
    assert "left out of survival cross-validation (2)" in html
    for subject in without:
        assert re.search(rf"{subject}</td><td[^>]*>no outcome row", html), subject


def test_every_subject_is_segmented_out_of_fold(brats_run, brats_folder):
    results = brats_run["results"]
    metrics = pd.read_parquet(results / "cohort/seg_metrics.parquet")
    assert sorted(metrics["subject"].unique()) == sorted(brats_folder["subjects"])
    folds = json.loads((results / "models/segmentation/folds.json").read_text())
    assert folds["seed"] == 0 and sorted(folds["folds"]) == sorted(brats_folder["subjects"])
    for subject, fold in folds["folds"].items():  # the fold model never trained on its subjects
        assert subject not in _trained_on(results / f"models/segmentation/fold{fold}/model.pt")
    features = pd.read_parquet(results / "cohort/features.parquet")
    assert sorted(features["subject"]) == sorted(brats_folder["subjects"])


def _trained_on(model_path) -> list[str]:
    import torch

    return torch.load(model_path, weights_only=False)["trained_on"]


def test_provided_labels_need_no_training(brats_run, brats_folder, tmp_path):
    """segmentation.mode provided: the expert labels are the segmentation; no model trains,
    nothing is scored, and the subjects' features come from their labels."""
    work = copy_run(brats_run["workdir"], tmp_path / "run")
    recipe_config(work, brats_folder, {"segmentation": {"mode": "provided"}})
    jobs = planned_jobs(work, "--forcerun", "segment_subject")
    assert "seg_train" not in jobs and "seg_folds" not in jobs and "seg_score" not in jobs
    assert jobs["segment_subject"] == 6
    snakemake(work, "segment")
    results = work / "results"
    for subject in brats_folder["subjects"][:2]:
        seg = results / f"subjects/{subject}/seg/seg.nii.gz"
        reference = results / f"subjects/{subject}/preproc/reference/seg.nii.gz"
        assert np.array_equal(np.asarray(nib.load(seg).dataobj), np.asarray(nib.load(reference).dataobj))
    assert pd.read_parquet(results / "cohort/seg_metrics.parquet").empty


def test_pretrained_model_segments_every_subject(brats_run, brats_folder, tmp_path):
    """segmentation.mode pretrained through Snakemake: the run's final model segments every
    subject (no training) and labelled subjects are scored against their labels."""
    work = copy_run(brats_run["workdir"], tmp_path / "run")
    model = brats_run["results"] / "models/segmentation/final/model.pt"
    recipe_config(work, brats_folder, {"segmentation": {"mode": "pretrained",
                                                         "model_path": str(model)}})
    jobs = planned_jobs(work, "segment")
    assert "seg_train" not in jobs and jobs["segment_subject"] == 6
    snakemake(work, "segment")
    metrics = pd.read_parquet(work / "results/cohort/seg_metrics.parquet")
    wt = metrics[(metrics.region == "WT") & (metrics.metric == "dice")]
    assert sorted(wt.subject) == sorted(brats_folder["subjects"])
    assert wt.value.min() > 0.3  # the final model trained on these very subjects: a plumbing check


def test_validate_names_a_missing_survival_column(brats_folder, tmp_path):
    config = recipe_config(tmp_path, brats_folder, {"survival": {"covariates": ["age", "kps"]}})
    btpipe = str(Path(sys.executable).with_name("btpipe"))
    proc = subprocess.run([btpipe, "validate", "--config", str(config)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "survival.covariates: column 'kps'" in proc.stderr
    assert str(brats_folder["clinical"]) in proc.stderr


@pytest.mark.parametrize("naming", ["2020", "2021", "2023", "2024"])
def test_recipes_plan_on_every_brats_naming(naming, tmp_path):
    """A dry run of each shipped recipe on a small synthetic folder of each release's naming."""
    from btpipe.demo.brats import write_brats_folder, write_survival_info

    data = tmp_path / "data"
    cases = write_brats_folder(data, 2, ATLAS_DIR, naming=naming, seed=2)
    recipes = {"brats_glioma.yaml": {}}
    if naming == "2020":
        write_survival_info(data / "survival_info.csv", cases)
        recipes["brats2020_os.yaml"] = {"clinical": str(data / "survival_info.csv")}
    for recipe, extra in recipes.items():
        work = tmp_path / recipe.removesuffix(".yaml")
        write_recipe_config(work, recipe, {"brats_dir": str(data), **extra})
        # btpipe validate merges a recipe over config.yaml as Snakemake does
        (work / "given.yaml").write_text(yaml.safe_dump({"brats_dir": str(data), **extra}))
        proc = subprocess.run([str(Path(sys.executable).with_name("btpipe")), "validate",
                               "--configfile", str(REPO / "recipes" / recipe),
                               "--configfile", str(work / "given.yaml")],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert "2 subjects, 0 problem(s)" in proc.stdout
        if recipe == "brats_glioma.yaml":
            expected = "brats2021" if naming in ("2020", "2021") else "brats2024"
            assert f"labels: auto -> {expected}" in proc.stdout
        jobs = planned_jobs(work)
        assert jobs["preprocess_subject"] == 2 and jobs["segment_subject"] == 2, (recipe, jobs)
        assert jobs["seg_train"] >= 2 and jobs["report"] == 1, (recipe, jobs)
        config = yaml.safe_load((work / "config.yaml").read_text())
        assert ("survival_submission" in jobs) == config["survival"].get("enabled", True)
