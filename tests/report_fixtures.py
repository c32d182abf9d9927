"""Synthetic results folder for the report tests and benchmark.

``make_results(root, ...)`` writes, under ``root``, every file the report
reads (see DESIGN.md "Outputs"), with the real schemas and small but valid
NIfTI volumes: ingest records (one subject failed), preprocessing QC with a
montage, atlas-space T1ce, brain mask and segmentation, segmentation metrics,
training log, radiomics features, survival metrics, predictions, comparisons,
embeddings, attention, QC exclusions and Snakemake benchmark files. Values are
random but plausible; nothing here is a result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from btpipe import io

SEQS = ("t1", "t1ce", "t2", "flair")
FAILED_ERROR = "subject {s}: no T1ce series found in {path} (3 series seen: t1, t2, flair)"
FEATURES = ("original_firstorder_Mean", "original_firstorder_Entropy", "original_glcm_Contrast",
            "original_glcm_MaximumProbability", "original_glrlm_RunEntropy",
            "original_glszm_ZoneEntropy", "wavelet-LLH_firstorder_Energy",
            "log-sigma-2-0-mm-3D_gldm_DependenceEntropy")
FEATURE_REGIONS = ("WT", "TC", "ET", "NCR", "ED")
MODELS = ("cox", "rsf")


def _affine(spacing: float) -> np.ndarray:
    """LPS voxel axes (as BraTS/SRI24 in ITK) in nibabel's RAS world."""
    return np.diag([-spacing, -spacing, spacing, 1.0])


def _volumes(shape, rng):
    """(t1ce float32, brain mask uint8, seg uint8 in brats2021 labels)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = ((grid[0] / 0.8) ** 2 + (grid[1] / 0.9) ** 2 + (grid[2] / 0.85) ** 2) <= 1
    centre = rng.uniform(-0.35, 0.35, 3)
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    size = rng.uniform(0.18, 0.3)
    seg = np.zeros(shape, np.uint8)
    seg[(r < size * 1.6) & brain] = 2
    seg[(r < size) & brain] = 4
    seg[(r < size * 0.55) & brain] = 1
    t1ce = np.where(brain, 400 + 60 * rng.standard_normal(shape), 0).astype(np.float32)
    t1ce[seg == 4] += 500
    t1ce[seg == 1] -= 150
    return t1ce, brain.astype(np.uint8), seg


def _montage(t1ce, tile=300):
    """A QC montage like preprocessing writes: 4 sequences x 3 planes, PNG-sized."""
    from PIL import Image

    hi = float(np.percentile(t1ce[t1ce > 0], 99)) if (t1ce > 0).any() else 1.0
    cx, cy, cz = (n // 2 for n in t1ce.shape)
    planes = [t1ce[cx], t1ce[:, cy], t1ce[:, :, cz]]
    canvas = Image.new("L", (tile * 3, tile * 4))
    for row, gain in enumerate((0.8, 1.0, 1.2, 0.9)):
        for col, plane in enumerate(planes):
            arr = np.clip(np.rot90(plane) * gain / hi * 255, 0, 255).astype(np.uint8)
            canvas.paste(Image.fromarray(arr).resize((tile, tile)), (col * tile, row * tile))
    return canvas


def _write_subject(root, s, shape, spacing, rng, flags):
    base = root / "subjects" / s
    t1ce, brain, seg = _volumes(shape, rng)
    aff = _affine(spacing)
    io.save_array_nifti(base / "preproc" / "t1ce.nii.gz", t1ce, aff, dtype=np.float32)
    io.save_array_nifti(base / "preproc" / "brain_mask.nii.gz", brain, aff, dtype=np.uint8)
    io.save_array_nifti(base / "seg" / "seg.nii.gz", seg, aff, dtype=np.uint8)
    with io.atomic_path(base / "preproc" / "qc.png") as tmp:
        _montage(t1ce).save(tmp, format="PNG")
    volume = float(brain.sum() * spacing ** 3 / 1000 * 8)
    sim = {f"{q}-t1ce": float(rng.uniform(0.3, 0.8)) for q in ("t1", "t2", "flair")}
    sim["t1ce-atlas"] = float(rng.uniform(0.4, 0.7))
    io.write_json(base / "preproc" / "qc.json", {
        "subject": s, "orientation_in": {q: "LPS" if q != "flair" else "RAS" for q in SEQS},
        "orientation_out": "LPS", "similarity": sim, "brain_volume_ml": volume, "flags": flags,
        "timings": {"n4": float(rng.uniform(2, 5)), "registration": float(rng.uniform(10, 30)),
                    "skull_strip": float(rng.uniform(3, 8))}})
    scores = {}
    for region, base_dice in (("WT", 0.88), ("TC", 0.8), ("ET", 0.75)):
        scores[region] = {"dice": float(np.clip(base_dice + 0.07 * rng.standard_normal(), 0, 1)),
                          "hd95": float(abs(6 + 4 * rng.standard_normal())),
                          "sensitivity": float(rng.uniform(0.7, 1.0)),
                          "specificity": float(rng.uniform(0.995, 1.0))}
    io.write_json(base / "seg" / "metrics.json", scores)
    io.write_json(base / "nifti" / "ingest.json", {
        "subject": s, "status": "ok", "error": None, "n_series": 5,
        "sequences": {q: {"series_number": i + 2, "series_description": f"AX {q.upper()}",
                          "shape": [256, 256, 24]} for i, q in enumerate(SEQS)},
        "warnings": ["localizer series skipped"] if rng.random() < 0.3 else []})
    io.write_json(base / "nifti" / "t1ce.json", {"ConversionSoftware": "dcm2niix",
                                                 "ConversionSoftwareVersion": "v1.0.20240202"})
    return scores, brain, seg


def _features(subjects, rng, n_features_per_region):
    rows = []
    for s in subjects:
        row = {"subject": s}
        et_empty = rng.random() < 0.15
        for seq in SEQS:
            for region in FEATURE_REGIONS:
                for k in range(n_features_per_region):
                    name = FEATURES[k % len(FEATURES)]
                    if k >= len(FEATURES):
                        name = f"{name}{k // len(FEATURES)}"
                    value = np.nan if (et_empty and region == "ET") else float(rng.normal(k, 1 + k))
                    row[f"{seq}_{region}_{name}"] = value
        for region in FEATURE_REGIONS:
            row[f"shape_{region}_VoxelVolume"] = np.nan if (et_empty and region == "ET") else \
                float(rng.uniform(1e3, 5e4))
            row[f"{region}_empty"] = int(et_empty and region == "ET")
        rows.append(row)
    return pd.DataFrame(rows)


def _survival(root, subjects, rng, models, folds, horizons):
    n = len(subjects)
    latent = rng.standard_normal(n)
    time = np.round(np.exp(6 + 0.6 * latent + 0.3 * rng.standard_normal(n)) + 30)
    event = rng.random(n) < 0.75
    metric_rows, preds = [], {}
    for mi, model in enumerate(models):
        risk = -latent + (0.8 + 0.4 * mi) * rng.standard_normal(n)
        fold = np.arange(n) % folds
        median = np.median(risk)
        frame = pd.DataFrame({"subject": subjects, "repeat": 0, "fold": fold, "risk": risk,
                              "predicted_days": np.nan, "time": time, "event": event,
                              "risk_group": np.where(risk > median, "high", "low")})
        for h in horizons:
            frame[f"surv_{h}d"] = 1 / (1 + np.exp(risk - 1 + h / 400))
        io.write_parquet(root / "survival" / model / "predictions.parquet", frame)
        io.write_json(root / "survival" / model / "card.json", {
            "model": model, "folds": folds, "repeats": 1, "n": n,
            "libraries": {"sksurv": "0.28.0"}})
        preds[model] = frame
        for f in range(folds):
            base = 0.66 - 0.04 * mi + 0.05 * rng.standard_normal()
            for metric, value in (("c_harrell", base), ("c_uno", base - 0.01), ("c_td", base + 0.01),
                                  ("ibs", 0.18 + 0.02 * rng.standard_normal()),
                                  ("hr", 1.8 + 0.4 * rng.standard_normal()),
                                  ("logrank_p", rng.uniform(0.001, 0.2)),
                                  ("class_accuracy", rng.uniform(0.35, 0.55)),
                                  ("mse", rng.uniform(8e4, 2e5)), ("spearman", rng.uniform(0, 0.4))):
                metric_rows.append((model, 0, f, metric, np.nan, float(value)))
            for h in horizons:
                metric_rows.append((model, 0, f, "auc_td", float(h), float(base + 0.03 * rng.standard_normal())))
    metrics = pd.DataFrame(metric_rows, columns=["model", "repeat", "fold", "metric", "horizon", "value"])
    io.write_parquet(root / "survival" / "metrics.parquet", metrics)
    comp = [{"model_a": a, "model_b": b, "metric": "c_harrell",
             "difference": float(rng.normal(0, 0.03)), "p_value": float(rng.uniform(0, 1))}
            for i, a in enumerate(models) for b in models[i + 1:]]
    io.write_parquet(root / "survival" / "comparisons.parquet",
                     pd.DataFrame(comp, columns=["model_a", "model_b", "metric", "difference", "p_value"]))
    cls = np.where(time < 304.4, "short", np.where(time <= 456.6, "mid", "long"))
    io.write_parquet(root / "survival" / "embeddings.parquet", pd.DataFrame(
        {"subject": subjects, "x": latent + rng.normal(0, 0.5, n), "y": rng.normal(0, 1, n),
         "survival_class": cls}))
    positions = np.linspace(0, 1, 11)
    att = pd.DataFrame([{"plane": p, "position": x, "attention": float(np.exp(-((x - 0.5) / 0.2) ** 2) / 5)}
                        for p in ("sagittal", "coronal", "axial") for x in positions])
    io.write_parquet(root / "survival" / models[0] / "attention.parquet", att)
    return preds


def make_results(root, n_subjects: int = 4, n_failed: int = 1, shape=(40, 40, 28),
                 spacing: float = 2.0, models=MODELS, folds: int = 3,
                 n_features_per_region: int = 4, horizons=(365, 730), seed: int = 0) -> dict:
    """Write a synthetic results folder; return what a test can check against.

    Returns {"root", "subjects" (ok ones), "failed" (ids), "errors" {id: message},
    "flagged" {id: [flags]}, "excluded" {id: [flags]}}.
    """
    from pathlib import Path

    root = Path(root)
    rng = np.random.default_rng(seed)
    ok = [f"sub-{i:03d}" for i in range(n_subjects)]
    failed = [f"sub-f{i:02d}" for i in range(n_failed)]
    errors = {}
    for s in failed:
        errors[s] = FAILED_ERROR.format(s=s, path=f"/data/dicom/{s}")
        io.write_json(root / "subjects" / s / "nifti" / "ingest.json", {
            "subject": s, "status": "failed", "error": errors[s], "file": f"/data/dicom/{s}"})
    flagged = {ok[0]: ["low_similarity_flair"]} if ok else {}
    qc_rows, seg_rows = [], []
    for s in ok:
        flags = flagged.get(s, [])
        scores, brain, _ = _write_subject(root, s, shape, spacing, rng, flags)
        dice_ref = float(np.clip(0.97 + 0.01 * rng.standard_normal(), 0, 1))
        qc_rows.append({"subject": s, "orientation_out": "LPS", "brain_volume_ml": 1400.0 + 100 * rng.standard_normal(),
                        "similarity_t2-t1ce": float(rng.uniform(0.3, 0.8)),
                        "flags": ";".join(flags), "brain_mask_dice_reference": dice_ref})
        for region, vals in scores.items():
            for metric, value in vals.items():
                seg_rows.append({"subject": s, "region": region, "metric": metric, "value": value})
    if ok:
        io.write_parquet(root / "cohort" / "qc.parquet", pd.DataFrame(qc_rows))
        seg = pd.DataFrame(seg_rows)
        io.write_parquet(root / "cohort" / "seg_metrics.parquet", seg)
        g = seg.groupby(["region", "metric"])["value"]
        summary = pd.concat([g.mean().rename("mean"), g.median().rename("median"), g.std().rename("std")],
                            axis=1).reset_index().melt(id_vars=["region", "metric"],
                                                       var_name="statistic", value_name="value")
        io.write_parquet(root / "cohort" / "seg_summary.parquet", summary)
        io.write_parquet(root / "cohort" / "features.parquet",
                         _features(ok, rng, n_features_per_region))
        _survival(root, ok, rng, tuple(models), folds, horizons)
        cov = [{"subject": s, "plane": p, "K": 16, "n_slices": 16, "coverage": float(rng.uniform(0.3, 0.9)),
                "empty_tumour": 0, "bytes": int(rng.integers(20_000, 60_000))}
               for s in ok for p in ("sagittal", "coronal", "axial", "mean")]
        io.write_parquet(root / "cohort" / "slice_coverage.parquet", pd.DataFrame(cov))
    excluded = dict(flagged)
    io.write_json(root / "survival" / "excluded.json",
                  {"excluded": excluded, "flags_excluded": ["low_similarity_flair"]})
    log_rows = []
    for model in [f"fold{k}" for k in range(folds)] + ["final"]:
        for step in range(0, 301, 10):
            val = step % 50 == 0
            d = 0.85 * (1 - np.exp(-step / 80)) + 0.02 * rng.standard_normal()
            log_rows.append({"model": model, "step": step, "train_loss": 1.2 * np.exp(-step / 120) + 0.1,
                             "val_dice_WT": d + 0.05 if val else np.nan, "val_dice_TC": d if val else np.nan,
                             "val_dice_ET": d - 0.05 if val else np.nan, "val_dice_mean": d if val else np.nan})
    io.write_csv(root / "models" / "segmentation" / "training_log.csv", pd.DataFrame(log_rows))
    bench_header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, mean_s in (("ingest", 4.0), ("preprocess", 45.0), ("segment", 12.0), ("radiomics", 30.0)):
        for s in ok:
            secs = float(rng.gamma(4, mean_s / 4))
            line = f"{secs:.4f}\t0:00:{int(secs):02d}\t{rng.uniform(200, 3000):.2f}\t0\t0\t0\t0\t0\t1\t{secs:.2f}\n"
            io.write_text(root / "benchmarks" / rule / f"{s}.tsv", bench_header + line)
    return {"root": root, "subjects": ok, "failed": failed, "errors": errors,
            "flagged": flagged, "excluded": excluded}


def demo_config(title: str = "Synthetic report") -> dict:
    """A config like the embedded default, with the demo truth box enabled."""
    return {
        "samples": "does-not-exist/samples.tsv", "results_dir": "results", "labels": "brats2021",
        "seed": 0, "demo": {"enabled": True, "out_dir": "demo", "subjects": 4, "seed": 0},
        "atlas": {"path": "resources/atlas/sri24/t1_brain.nii.gz", "spacing_mm": 2.0},
        "ingest": {"rules": "resources/ingest/sequence_rules.yaml"},
        "preprocess": {"registration_backend": "ants", "atlas_transform": "rigid",
                       "skull_strip": "deepbet", "brain_volume_ml": [700, 2200],
                       "clip_percentiles": [0.5, 99.5]},
        "segmentation": {"mode": "train", "network": "segresnet", "folds": 3, "init_filters": 8,
                         "roi_size": [64, 64, 64], "batch_size": 2, "max_steps": 300,
                         "val_every": 50, "learning_rate": 0.002, "tta": False},
        "radiomics": {"mask": "predicted", "params": "resources/radiomics/params.yaml",
                      "sequences": list(SEQS), "regions": list(FEATURE_REGIONS)},
        "survival": {"time": "survival_days", "event": "event", "covariates": ["age"],
                     "features": "radiomics", "folds": 3, "repeats": 1, "top_n": 20,
                     "models": list(MODELS), "horizons_days": [365, 730],
                     "class_cutoffs_months": [10, 15]},
        "report": {"title": title},
    }
