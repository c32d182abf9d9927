"""Unit tests of the evaluation report (btpipe.report) on synthetic results."""

from __future__ import annotations

import base64
import html
import io as _io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btpipe import io
from btpipe.report import build_report, methods_text
from btpipe.report import figures as F
from btpipe.report.blocks import fmt
from btpipe.report.provenance import benchmark_table
from btpipe.survival.metrics import mean_ci
from report_fixtures import demo_config, make_results

REPO = Path(__file__).resolve().parents[1]

RUN_INFO = {"btpipe version": "0.1.0", "git commit": "abc1234", "config digest": "deadbeef",
            "command line": "snakemake --cores 2 report", "started": "2026-01-01T10:00",
            "finished": "2026-01-01T10:42", "packages": {"numpy": np.__version__}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    info = make_results(root / "results", n_subjects=6, n_failed=1)
    out = build_report(root / "results", demo_config(), root / "report" / "report.html",
                       run_info=RUN_INFO)
    return info, out, out.read_text(encoding="utf-8")


def _img_tags(text):
    return re.findall(r"<img\b[^>]*>", text)


def _decode(uri):
    head, data = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(_io.BytesIO(base64.b64decode(data)))


@pytest.mark.slow
def test_report_lists_subjects_and_failure(built):
    info, out, text = built
    assert out.exists() and out.name == "report.html"
    for subject in info["subjects"] + info["failed"]:
        assert subject in text
    for subject in info["failed"]:
        assert html.escape(info["errors"][subject]) in text
    # The failed subject's row is marked as failed in the subjects table.
    assert re.search(r'<tr class="failed"><td[^>]*>' + info["failed"][0], text)
    # QC-flagged subject is listed as excluded with its reason.
    flagged = next(iter(info["excluded"]))
    assert "low_similarity_flair" in text and f"qc-{flagged}" in text


@pytest.mark.slow
def test_report_is_self_contained_and_images_decode(built):
    _, out, text = built
    # Nothing is fetched: no external src/href, no <link> or external script.
    assert not re.search(r'\b(?:src|href)="(?!data:|#)', text)
    assert "<link" not in text and "<script src" not in text
    tags = _img_tags(text)
    uris = [re.search(r'src="([^"]+)"', t).group(1) for t in tags if 'src="' in t]
    assert len(uris) >= 10
    for uri in uris:
        img = _decode(uri)
        img.load()
        assert img.width > 10 and img.height > 10
    # No temporary file is left beside the report (atomic write).
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


@pytest.mark.slow
def test_report_has_kaplan_meier_and_sections(built):
    info, _, text = built
    km = [t for t in _img_tags(text) if 'alt="Kaplan-Meier: cox"' in t]
    assert len(km) == 1
    img = _decode(re.search(r'src="([^"]+)"', km[0]).group(1))
    arr = np.asarray(img.convert("RGB"), float)
    assert arr.std() > 5  # a drawn plot, not a blank canvas
    for section in ("cohort", "gallery", "preproc", "segmentation", "radiomics", "survival",
                    "methods", "provenance", "demo"):
        assert f'<section id="{section}">' in text
    # One gallery card per subject with an image folder, each with two images.
    assert text.count('class="card') == len(info["subjects"])
    assert text.count('alt="segmentation overlay ') == len(info["subjects"])
    # Segmentation summary, training curves, time-dependent AUC, calibration.
    for title in ("Segmentation scores by region", "Training curves", "Time-dependent AUC",
                  "Calibration", "Attention against slice position: cox",
                  "Top ", "Out-of-fold survival metrics", "Anchor-slice bags"):
        assert title in text


@pytest.mark.slow
def test_report_demo_box_and_provenance(built):
    info, _, text = built
    qc = pd.read_parquet(info["root"] / "cohort" / "qc.parquet")
    seg = pd.read_parquet(info["root"] / "cohort" / "seg_metrics.parquet")
    wt = seg[(seg.region == "WT") & (seg.metric == "dice")]["value"]
    assert f"mean {qc['brain_mask_dice_reference'].mean():.3f}" in text
    assert f"mean {wt.mean():.3f}" in text
    verdict = "pass" if wt.mean() >= 0.85 else "fail"
    row = re.search(r"WT Dice vs truth.*?</tr>", text, re.S).group(0)
    assert verdict in row
    # run_info and per-rule benchmark times are shown.
    assert "abc1234" in text and html.escape(RUN_INFO["command line"]) in text
    bench = benchmark_table(info["root"])
    assert set(bench["rule"]) == {"ingest", "preprocess", "segment", "radiomics"}
    assert (bench["jobs"] == len(info["subjects"])).all()
    assert f"{bench['total (s)'].max():,.0f}" in text or fmt(bench["total (s)"].max()) in text


def test_report_on_empty_results_dir(tmp_path):
    out = build_report(tmp_path / "nothing-here", {"report": {"title": "Empty <run>"}},
                       tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "Empty &lt;run&gt;" in text  # title escaped
    assert text.count("not available") >= 6
    for section in ("cohort", "gallery", "preproc", "segmentation", "radiomics", "survival",
                    "methods", "provenance"):
        assert f'<section id="{section}">' in text
    assert 'id="demo"' not in text  # demo box only when the demo is enabled


def test_report_survives_corrupt_and_partial_inputs(tmp_path):
    root = tmp_path / "results"
    io.write_text(root / "survival" / "metrics.parquet", "this is not parquet")
    io.write_json(root / "subjects" / "s1" / "nifti" / "ingest.json",
                  {"subject": "s1", "status": "failed", "error": "s1: DICOM folder empty <x>",
                   "sequences": {}, "n_series": 0, "warnings": []})
    # A T1ce without segmentation or mask still gives an overlay image.
    data = np.random.default_rng(0).normal(100, 10, (12, 14, 10)).astype(np.float32)
    io.save_array_nifti(root / "subjects" / "s2" / "preproc" / "t1ce.nii.gz", data, np.eye(4))
    out = build_report(root, demo_config(), tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "s1: DICOM folder empty &lt;x&gt;" in text
    assert "survival/metrics.parquet" in text and "could not be read" in text
    assert 'alt="segmentation overlay s2"' in text
    assert "WT Dice vs truth (out-of-fold)" in text and "not available" in text


def test_cohort_table_counts_the_series_ingest_saw(tmp_path):
    """The "series found" cell comes from what ingest really writes (ingest.json's
    n_series, else series.parquet), here a demo subject (4 series) ingested for real."""
    from btpipe.demo.generate import make_subject
    from btpipe.report.cohort import cohort_section
    from btpipe.report.inputs import Inputs
    from btpipe.ingest.step import ingest_step

    make_subject(tmp_path / "demo", "demo-000", 0, seed=0, voxel_scale=3.0)
    results = tmp_path / "results"
    nifti = results / "subjects" / "demo-000" / "nifti"
    record = ingest_step("demo-000", {"dicom_dir": str(tmp_path / "demo" / "dicom" / "demo-000")},
                         nifti, REPO / "resources" / "ingest" / "sequence_rules.yaml")
    assert record["status"] == "ok" and record["n_series"] == 4

    def series_cell():
        blocks = cohort_section(Inputs(results), ["demo-000"])["blocks"]
        table = next(b["table"] for b in blocks if b.get("table") and b["table"].caption == "Subjects")
        return table.rows[0][table.columns.index("series found")]

    assert series_cell() == "4"
    io.write_json(nifti / "ingest.json", {k: v for k, v in record.items() if k != "n_series"})
    assert series_cell() == "4"                          # from series.parquet


def test_models_at_or_below_chance_are_explained(tmp_path):
    """A constant forest (C 0.5 exactly) and a Cox below chance each get a reason on
    the page, in the demo box and the survival section; a model above chance none."""
    root = tmp_path / "results"
    make_results(root, n_subjects=12, n_failed=0, models=("age_cox", "cox", "rsf"), folds=3)
    metrics = pd.read_parquet(root / "survival" / "metrics.parquet")
    harrell = metrics["metric"] == "c_harrell"
    metrics.loc[harrell & (metrics["model"] == "age_cox"), "value"] = [0.78, 0.81, 0.75]
    metrics.loc[harrell & (metrics["model"] == "cox"), "value"] = [0.30, 0.45, 0.43]
    metrics.loc[harrell & (metrics["model"] == "rsf"), "value"] = 0.5
    io.write_parquet(root / "survival" / "metrics.parquet", metrics)
    rsf = pd.read_parquet(root / "survival" / "rsf" / "predictions.parquet").assign(risk=7.25)
    io.write_parquet(root / "survival" / "rsf" / "predictions.parquet", rsf)
    for model, extra in (("rsf", {"hyperparameters": {"min_samples_leaf": 15}}),
                         ("cox", {"features_used_final": ["age", "f1", "f2", "f3"]})):
        io.write_json(root / "survival" / model / "card.json",
                      {"model": model, "n": 12, "n_events": 9, "folds": 3, **extra})
    text = build_report(root, demo_config(), tmp_path / "r.html").read_text(encoding="utf-8")
    constant = "rsf: C 0.500 because it gave every test subject the same risk"
    below = "cox: C 0.393, no better than chance out of fold"
    for sentence in (constant, below, "min_samples_leaf", "uses 4 features"):
        assert text.count(sentence) == 2, sentence            # demo box and survival section
    assert "includes 0.5" in text
    assert "age_cox: C" not in text
    row = re.search(r"Survival C-index \(Harrell\), age_cox.*?</tr>", text, re.S).group(0)
    assert "above chance" in row
    row = re.search(r"Survival C-index \(Harrell\), rsf.*?</tr>", text, re.S).group(0)
    assert "at or below chance" in row


def test_largest_tumour_slice_and_overlay(tmp_path):
    seg = np.zeros((20, 22, 16), np.uint8)
    seg[5:9, 5:9, 3] = 2
    seg[4:15, 4:15, 11] = 4  # largest area on slice 11
    assert F.largest_tumour_slice(seg) == 11
    assert F.largest_tumour_slice(np.zeros((4, 4, 6))) == 3
    t1ce = np.random.default_rng(1).normal(300, 30, seg.shape).astype(np.float32)
    mask = np.zeros(seg.shape, np.uint8)
    mask[2:18, 2:20, :] = 1
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS voxel axes
    for name, arr, dt in (("t1ce", t1ce, np.float32), ("seg", seg, np.uint8), ("mask", mask, np.uint8)):
        io.save_array_nifti(tmp_path / f"{name}.nii.gz", arr, aff, dtype=dt)
    uri, z = F.segmentation_overlay(tmp_path / "t1ce.nii.gz", tmp_path / "seg.nii.gz",
                                    tmp_path / "mask.nii.gz", {1: "NCR", 2: "ED", 4: "ET"})
    canon = nib.as_closest_canonical(nib.load(tmp_path / "seg.nii.gz"))
    assert (np.asarray(canon.dataobj)[:, :, z] == 4).sum() == 11 * 11
    img = np.asarray(_decode(uri).convert("RGB")).astype(int)
    assert max(img.shape[:2]) >= 120 and img.shape[0] / img.shape[1] == 22 / 20  # upscaled, rotated
    yellowish = (img[..., 0] > 150) & (img[..., 1] > 110) & (img[..., 2] < 120)
    blue = (img[..., 0] < 40) & (img[..., 1] > 140) & (img[..., 2] > 200)
    assert yellowish.sum() > 0 and blue.sum() > 0  # ET fill and brain-mask outline


def test_mean_ci_properties():
    rng = np.random.default_rng(3)
    few, many = rng.normal(0.65, 0.05, 5), rng.normal(0.65, 0.05, 50)
    m, lo, hi, n = mean_ci(few)
    assert n == 5 and lo < m < hi and np.isclose(m - lo, hi - m)
    _, lo2, hi2, _ = mean_ci(many)
    assert hi2 - lo2 < hi - lo
    assert mean_ci([np.nan, 0.7])[3] == 1 and np.isnan(mean_ci([])[0])


def test_methods_text_reflects_what_ran(tmp_path):
    assert "nothing" in methods_text({}, tmp_path).lower() or "no pipeline" in methods_text({}, tmp_path).lower()
    metrics = pd.DataFrame({"model": ["cox", "deepsurv"], "repeat": 0, "fold": 0,
                            "metric": "c_harrell", "horizon": np.nan, "value": [0.6, 0.62]})
    io.write_parquet(tmp_path / "survival" / "metrics.parquet", metrics)
    text = methods_text(demo_config(), tmp_path)
    assert "Katzman" in text and "DeepSurv" in text
    assert "Lee C" not in text  # DeepHit did not run
    assert "Pölsterl" in text
    assert "dcm2niix" not in text and "SegResNet" not in text  # those stages did not run


def test_methods_text_says_how_long_each_model_trained(tmp_path):
    """The steps run and why training stopped come from each model's training.json."""
    config = demo_config()
    config["segmentation"].update(max_steps=600, time_budget_min=4.5)
    models = tmp_path / "models" / "segmentation"
    for name, steps, why in (("fold0", 600, "max_steps"), ("fold1", 512, "time_budget"),
                             ("final", 455, "time_budget")):
        io.write_json(models / name / "training.json", {
            "steps": steps, "max_steps": 600, "stopped_by": why, "time_budget_min": 4.5,
            "time_budget_applied": True})
    io.write_csv(models / "training_log.csv", pd.DataFrame({"model": ["fold0"], "step": [1]}))
    text = methods_text(config, tmp_path)
    assert "up to 600 optimiser steps or 4.5 minutes of wall-clock time per model" in text
    assert ("final 455 steps (stopped by the time budget); fold0 600 steps (all steps); "
            "fold1 512 steps (stopped by the time budget)") in text
    for name in ("fold0", "fold1", "final"):                  # deterministic: budget not applied
        io.write_json(models / name / "training.json", {"steps": 600, "stopped_by": "max_steps",
                                                        "time_budget_applied": False})
    text = methods_text(config, tmp_path)
    assert "600 optimiser steps: final 600 steps (all steps)" in text and "wall-clock" not in text


def test_fmt():
    assert fmt(None) == "–" and fmt(float("nan")) == "–"
    assert fmt(3) == "3" and fmt(0.12345) == "0.123" and fmt(123456.0) == "123,456"
    assert fmt({"a": 1}) == "a: 1"


def test_feature_cindex_matches_sksurv():
    from sksurv.metrics import concordance_index_censored

    from btpipe.report.radiomics import feature_cindex

    rng = np.random.default_rng(7)
    n = 40
    time = rng.integers(50, 400, n).astype(float)
    time[:6] = time[6:12]  # tied times, some censored at an event time
    event = rng.random(n) < 0.6
    feats = pd.DataFrame({"subject": [f"s{k}" for k in range(n)],
                          "a": rng.normal(size=n), "b": rng.integers(0, 4, n).astype(float),
                          "c": rng.normal(size=n), "const": 1.0})
    feats.loc[rng.choice(n, 9, replace=False), "c"] = np.nan
    outcomes = pd.DataFrame({"subject": feats["subject"], "time": time, "event": event})
    got = feature_cindex(feats, outcomes, ["a", "b", "c", "const"]).set_index("feature")
    assert "const" not in got.index  # a constant carries no ranking
    for col in ("a", "b", "c"):
        ok = feats[col].notna().to_numpy()
        expected = concordance_index_censored(event[ok], time[ok], feats[col].to_numpy()[ok])[0]
        assert got.loc[col, "c_index"] == pytest.approx(expected, abs=1e-12)
        assert got.loc[col, "n"] == ok.sum()


@pytest.mark.parametrize("backend, atlas_tool", [("greedy", "greedy (picsl-greedy"),
                                                 ("ants", "ANTsPy (antspyx")])
def test_methods_text_names_the_registration_tools(tmp_path, backend, atlas_tool):
    """The same-session pairs always run with ANTs; the atlas step with the backend."""
    io.write_json(tmp_path / "subjects" / "s1" / "preproc" / "qc.json", {"subject": "s1"})
    config = demo_config()
    config["preprocess"]["registration_backend"] = backend
    text = methods_text(config, tmp_path)
    assert "to the T1ce with ANTsPy (antspyx" in text
    assert f"resampled to 2 mm with {atlas_tool}" in text
    assert ("Yushkevich" in text) == (backend == "greedy")


@pytest.mark.parametrize("target, phrase", [
    ("head", "(the whole head against the atlas's skull-on T1)"),
    ("brain", "(the skull-stripped T1ce against the atlas brain)")])
def test_methods_text_names_the_atlas_target(tmp_path, target, phrase):
    io.write_json(tmp_path / "subjects" / "s1" / "preproc" / "qc.json", {"subject": "s1"})
    config = demo_config()
    config["preprocess"]["atlas_target"] = target
    assert phrase in methods_text(config, tmp_path)


@pytest.mark.parametrize("tta,phrase", [("none", None), (False, None),
                                        ("lr", "its left-right mirror"),
                                        ("all", "all eight axis mirrorings"),
                                        (True, "all eight axis mirrorings")])
def test_methods_text_names_the_test_time_mirroring(tmp_path, tta, phrase):
    io.write_csv(tmp_path / "models" / "segmentation" / "training_log.csv",
                 pd.DataFrame({"step": [1], "loss": [0.5]}))
    config = demo_config()
    config["segmentation"]["tta"] = tta
    text = methods_text(config, tmp_path)
    assert "SegResNet" in text
    assert ("mirror" in text) == (phrase is not None)
    assert phrase is None or phrase in text


def test_segmentation_section_lists_lesions_and_methods_name_panoptica(tmp_path):
    """Lesion-wise scores of two subjects (one lesion found and one missed; nothing
    found) reach the summary, the per-subject table and one row per reference lesion."""
    from btpipe.report.inputs import Inputs
    from btpipe.report.segmentation import segmentation_section
    from btpipe.segment.metrics import cohort_tables, score

    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:5, 2:5, 2:5] = 2
    ref[12:14, 12:14, 12:14] = 2
    preds = {"s1": np.where(np.arange(20)[:, None, None] < 8, ref, 0), "s2": np.zeros_like(ref)}
    paths = {}
    for subject, pred in preds.items():
        paths[subject] = tmp_path / "subjects" / subject / "seg" / "metrics.json"
        io.write_json(paths[subject], score(pred, ref, metric_sets=("legacy", "lesionwise")))
        io.save_array_nifti(paths[subject].parent / "seg.nii.gz", pred, np.eye(4), dtype=np.uint8)
    long, summary = cohort_tables(paths)
    io.write_parquet(tmp_path / "cohort" / "seg_metrics.parquet", long)
    io.write_parquet(tmp_path / "cohort" / "seg_summary.parquet", summary)
    blocks = segmentation_section(Inputs(tmp_path))["blocks"]
    assert {"lw_dice", "lesions_fn"} <= {row[1] for row in blocks[0]["table"].rows}
    details = {b["summary"]: b["blocks"][0]["table"] for b in blocks if b["kind"] == "details"}
    assert "lw_dice WT" in details["Scores per subject (2)"].columns
    lesions = details["Lesions per subject (4)"]       # 2 subjects x 2 WT lesions
    assert lesions.columns[:4] == ["subject", "region", "lesion", "volume (mm³)"]
    detected = [(row[0], row[3], row[4]) for row in lesions.rows]
    assert sorted(detected) == [("s1", "27", "yes"), ("s1", "8", "no"),
                                ("s2", "27", "no"), ("s2", "8", "no")]
    assert "4 reference lesions, 3 missed; 0 spurious" in lesions.note
    text = methods_text(demo_config(), tmp_path)
    assert "Lesion-wise Dice" in text and "panoptica" in text
