"""Integration: the whole DAG on a tiny demo cohort, with real tools at every
stage, checked against the demo's ground truth; caching and refresh."""

from __future__ import annotations

import json
import zipfile

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from pipeline_helpers import copy_run, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.integration

EVERY_RULE = {"demo_subject", "demo_sheet", "ingest_subject", "ingest_summary",
              "preprocess_subject", "reference_to_atlas", "qc_cohort", "seg_folds", "seg_train",
              "segment_subject", "seg_score", "seg_cohort", "radiomics_subject", "slice_bag",
              "features_cohort", "slice_coverage", "survival_table", "survival_folds",
              "survival_model", "survival_summary", "report", "all"}

PER_SUBJECT_OUTPUTS = [
    "nifti/t1.nii.gz", "nifti/t1ce.nii.gz", "nifti/t2.nii.gz", "nifti/flair.nii.gz",
    "nifti/t1ce.json", "nifti/series.parquet", "nifti/ingest.json",
    "preproc/t1ce.nii.gz", "preproc/norm/flair.nii.gz", "preproc/brain_mask.nii.gz",
    "preproc/transforms/t1ce_to_atlas.mat", "preproc/transforms/atlas_to_t1ce.mat",
    "preproc/qc.json", "preproc/qc.png", "seg/seg.nii.gz", "seg/prob.nii.gz",
    "seg/uncertainty.nii.gz", "seg/seg_native.nii.gz", "seg/metrics.json",
    "radiomics.parquet", "slices.npz",
]
COHORT_OUTPUTS = [
    "cohort/features.parquet", "cohort/qc.parquet", "cohort/slice_coverage.parquet",
    "cohort/seg_metrics.parquet", "cohort/seg_summary.parquet",
    "models/segmentation/folds.json", "models/segmentation/final/model.pt",
    "models/segmentation/training_log.csv", "survival/folds.json",
    "survival/cox/predictions.parquet", "survival/cox/card.json", "survival/metrics.parquet",
    "survival/comparisons.parquet", "survival/embeddings.parquet", "report/report.html",
]


def test_dry_run_on_default_config_lists_every_rule(tmp_path):
    """`snakemake -n` on a clean folder with the shipped config plans every rule."""
    write_config(tmp_path, tiny=False)
    jobs = planned_jobs(tmp_path)
    assert EVERY_RULE <= set(jobs), f"missing from the plan: {EVERY_RULE - set(jobs)}"
    assert jobs["preprocess_subject"] == 24
    assert jobs["seg_train"] == 2  # 2 folds: the demo trains no final model


def test_final_model_is_planned_only_when_asked_for(tmp_path):
    """segmentation.final_model: true adds the model trained on every labelled subject
    to the plan (a deliverable of rule all); with unlabelled: final it is required."""
    write_config(tmp_path, {"segmentation": {"final_model": True}}, tiny=False)
    assert planned_jobs(tmp_path)["seg_train"] == 3
    write_config(tmp_path, {"segmentation": {"final_model": False, "unlabelled": "final"}},
                 tiny=False)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "segmentation.unlabelled is final but segmentation.final_model is false" in (
        proc.stdout + proc.stderr)


def test_every_output_written(tiny_run):
    results = tiny_run["results"]
    subjects = pd.read_parquet(results / "cohort/ingest.parquet")["subject"]
    assert len(subjects) == 5
    for subject in subjects:
        for rel in PER_SUBJECT_OUTPUTS:
            assert (results / "subjects" / subject / rel).exists(), f"{subject}/{rel}"
    for rel in COHORT_OUTPUTS:
        assert (results / rel).exists(), rel
    leftovers = [p for p in results.rglob(".tmp-*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_brain_masks_match_demo_truth(tiny_run):
    """Skull stripping + registration against the demo's true brain (3 mm grid:
    partial voxels on the brain surface cost a few points of Dice)."""
    qc = pd.read_parquet(tiny_run["results"] / "cohort/qc.parquet")
    dice = qc["brain_mask_dice_reference"]
    assert dice.notna().all()
    assert dice.min() >= 0.90, dice.tolist()


def test_sequences_registered_onto_the_planted_motion(tiny_run):
    """The demo moves each series by a small rigid motion of its own (truth.json);
    the same-session transforms must undo it, to well under the 3 mm registration
    grid, at the true brain's voxels."""
    from btpipe.demo.generate import planted_sequence_transforms
    from btpipe.preprocess.register import matrix_of, mean_distance, voxel_points_lps

    for truth_dir in sorted((tiny_run["workdir"] / "demo/truth").iterdir()):
        truth = json.loads((truth_dir / "truth.json").read_text())
        brain = nib.load(truth_dir / "brain_mask.nii.gz")
        points = voxel_points_lps(brain.affine, brain.dataobj, every=20)
        transforms = tiny_run["results"] / "subjects" / truth_dir.name / "preproc/transforms"
        for seq, true in planted_sequence_transforms(truth).items():
            found = matrix_of(transforms / f"{seq}_to_t1ce.mat")
            error, planted = (mean_distance(m, true, points) for m in (found, np.eye(4)))
            assert error < min(1.0, planted / 2), (truth_dir.name, seq, error, planted)


def test_out_of_fold_segmentation_matches_truth(tiny_run):
    """Each subject is segmented by the fold model that never saw it; a model
    trained for 120 steps on 2-3 subjects at 3 mm must still find the whole
    tumour (it is bright on FLAIR/T2), so WT Dice well above chance."""
    results = tiny_run["results"]
    folds = json.loads((results / "models/segmentation/folds.json").read_text())
    assignment = folds.get("folds", folds)
    metrics = pd.read_parquet(results / "cohort/seg_metrics.parquet")
    wt = metrics[(metrics.region == "WT") & (metrics.metric == "dice")]
    assert set(wt.subject) == set(assignment)
    assert wt.value.median() >= 0.5, wt.to_string()


def test_lesionwise_scores_reach_the_cohort_table_and_report(tiny_run):
    """scoring.metrics defaults to both sets: lesion-wise rows beside the legacy ones,
    per-lesion lists in metrics.json, and the report's per-lesion table."""
    results = tiny_run["results"]
    metrics = pd.read_parquet(results / "cohort/seg_metrics.parquet")
    by_metric = metrics.groupby("metric")["subject"].nunique()
    n_subjects = metrics["subject"].nunique()
    for name in ("dice", "hd95", "lw_dice", "lw_hd95", "lw_nsd", "lesions_tp", "lesions_fn"):
        assert by_metric.get(name) == n_subjects, name
    for subject in metrics["subject"].unique():
        wt = json.loads((results / "subjects" / subject / "seg/metrics.json").read_text())["WT"]
        assert len(wt["lesions"]) == wt["lesions_tp"] + wt["lesions_fn"] >= 1
        assert sum(lesion["detected"] for lesion in wt["lesions"]) == wt["lesions_tp"]
    assert "Lesions per subject" in (results / "report/report.html").read_text()


def test_native_segmentation_on_t1ce_grid(tiny_run):
    results = tiny_run["results"]
    subject = sorted((results / "subjects").iterdir())[0]
    native = nib.load(subject / "seg/seg_native.nii.gz")
    t1ce = nib.load(subject / "nifti/t1ce.nii.gz")
    assert native.shape[:3] == t1ce.shape[:3]
    assert np.allclose(native.affine, t1ce.affine, atol=1e-3)
    assert set(np.unique(np.asarray(native.dataobj))) <= {0, 1, 2, 4}


def test_second_run_does_nothing(tiny_run):
    assert planned_jobs(tiny_run["workdir"]) == {}


def test_snakemake_report_with_captions(tiny_run, tmp_path):
    """Snakemake's own report holds the captioned figures."""
    out = tmp_path / "report.zip"
    snakemake(tiny_run["workdir"], "--report", str(out))
    names = zipfile.ZipFile(out).namelist()
    assert sum(n.endswith("qc.png") for n in names) == 5
    assert any(n.endswith("kaplan_meier.png") for n in names)
    assert any(n.endswith("seg_scores.png") for n in names)


@pytest.mark.slow
def test_changed_and_added_subjects_rerun_only_their_branches(tiny_run, tmp_path):
    """Rewriting one subject's DICOM and adding a subject to the cohort rerun
    those subjects' ingest and preprocessing and the cohort steps (folds
    models, survival, report); no other subject's ingest or preprocessing."""
    work = copy_run(tiny_run["workdir"], tmp_path / "run")
    write_config(work, {"demo": {"subjects": 6}})
    results = work / "results"
    per_subject = ["nifti/ingest.json", "preproc/t1ce.nii.gz", "preproc/qc.json"]
    before = {p: p.stat().st_mtime_ns for rel in per_subject
              for p in results.glob(f"subjects/*/{rel}")}
    report_before = (results / "report/report.html").stat().st_mtime_ns
    snakemake(work, "--forcerun", "demo/dicom/demo-001")
    for path, mtime in before.items():
        changed = path.stat().st_mtime_ns != mtime
        assert changed == ("demo-001" in str(path)), path
    assert (results / "subjects/demo-005/preproc/t1ce.nii.gz").exists()
    ingested = pd.read_parquet(results / "cohort/ingest.parquet")
    assert set(ingested.subject) == {f"demo-00{i}" for i in range(6)}
    assert (results / "report/report.html").stat().st_mtime_ns > report_before
    assert "demo-005" in (results / "report/report.html").read_text()
    assert planned_jobs(work) == {}


@pytest.mark.slow
def test_kill_during_training_then_rerun_incomplete_gives_same_model(tiny_run, tmp_path):
    """kill -9 the whole run while the final model trains (after a checkpoint);
    `--rerun-incomplete` resumes from the checkpoint and ends with the same
    weights as the uninterrupted run (deterministic CPU training)."""
    import os
    import signal
    import subprocess
    import time

    import torch
    from pipeline_helpers import REPO, SNAKEMAKE

    work = copy_run(tiny_run["workdir"], tmp_path / "run")
    final = work / "results/models/segmentation/final"
    for name in ("model.pt", "training_log.csv"):
        (final / name).unlink()
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
           str(work / "config.yaml"), "--cores", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    checkpoints = work / "results/work/segmentation/final"
    deadline = time.monotonic() + 900
    while not any(p.is_file() for p in checkpoints.rglob("*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before a checkpoint was written"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (final / "model.pt").exists()
    snakemake(work, "--unlock")  # the killed controller could not release its lock
    snakemake(work, "--rerun-incomplete")
    resumed = torch.load(final / "model.pt", weights_only=False)["state_dict"]
    reference = torch.load(tiny_run["results"] / "models/segmentation/final/model.pt",
                           weights_only=False)["state_dict"]
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert not list((work / "results").rglob(".tmp-*"))


def test_held_out_subjects_stay_out_of_every_survival_model(tiny_run, tmp_path):
    """survival.holdout_fraction through the pipeline's steps: the table model
    and the image model score the held-out subject with their fold models; no
    fold, encoder pre-training or final model sees it."""
    import warnings

    from btpipe.survival import step

    results = tiny_run["results"]
    config = yaml.safe_load((tiny_run["workdir"] / "config.yaml").read_text())
    survival = {**config["survival"], "holdout_fraction": 0.2,
                "model_params": {"bag_mean_cox": {"epochs": 2, "pretrain_epochs": 1}}}
    table, new = results / "survival/input.parquet", results / "survival/new_subjects.parquet"
    subjects = sorted(p.name for p in (results / "subjects").iterdir())
    bags = [str(results / "subjects" / s / "slices.npz") for s in subjects]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny folds: NaN metrics warn
        step.folds_step(table, survival, 0, tmp_path / "folds.json")
        step.model_step("cox", table, new, tmp_path / "folds.json", survival, 0, tmp_path)
        step.model_step("bag_mean_cox", table, new, tmp_path / "folds.json", survival, 0, tmp_path,
                        images=bags, subjects=subjects)
    holdout = set(json.loads((tmp_path / "folds.json").read_text())["holdout_ids"])
    assert len(holdout) == 1
    for model in ("cox", "bag_mean_cox"):
        held = pd.read_parquet(tmp_path / model / "holdout_predictions.parquet")
        assert set(held["subject"]) == holdout, model
        assert (held["n_folds"] == len(json.loads((tmp_path / "folds.json").read_text())
                                       ["folds"])).all(), model
        predicted = set(pd.read_parquet(tmp_path / model / "predictions.parquet")["subject"])
        assert predicted and not predicted & holdout, model
    card = json.loads((tmp_path / "bag_mean_cox/card.json").read_text())
    assert card["n_holdout"] == 1
    for training in card["fold_training"] + [card["final_training"]]:
        assert not set(training["pretrain_subjects"]) & holdout


def test_an_option_reruns_only_the_jobs_it_feeds(tiny_run, tmp_path):
    """After a finished run: an inference option re-segments without retraining; a new survival
    model runs alone (with the summary and the report); a report title rebuilds the report only."""
    work = copy_run(tiny_run["workdir"], tmp_path / "run")
    config = yaml.safe_load((work / "config.yaml").read_text())
    models = config["survival"]["models"]

    write_config(work, {"segmentation": {"tta": "lr"}})
    jobs = planned_jobs(work)
    assert "seg_train" not in jobs and "preprocess_subject" not in jobs
    assert jobs["segment_subject"] == 5

    added = next(m for m in ("age_cox", "coxnet", "gbs") if m not in models)
    write_config(work, {"survival": {"models": [*models, added]}})
    assert planned_jobs(work) == {"survival_model": 1, "survival_summary": 1, "report": 1, "all": 1}

    write_config(work, {"report": {"title": "another title"}})
    assert planned_jobs(work) == {"report": 1, "all": 1}
