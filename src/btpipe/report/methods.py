"""Methods text generated from what actually ran.

Like fMRIPrep's boilerplate, each paragraph is written only when the stage's
outputs exist under results_dir, and it states the tools with the versions
recorded in the outputs (dcm2niix sidecars, survival model cards) or, when a
file does not record one, the version installed in this environment. Only
the papers of components that ran are cited.
"""

from __future__ import annotations

import contextlib
import json
from importlib import metadata
from pathlib import Path

import pandas as pd

REFERENCES = {
    "dcm2niix": "Li X, Morgan PS, Ashburner J, Smith J, Rorden C. The first step for "
                "neuroimaging data analysis: DICOM to NIfTI conversion. J Neurosci Methods. "
                "2016;264:47-56.",
    "ants": "Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible "
            "evaluation of ANTs similarity metric performance in brain image registration. "
            "NeuroImage. 2011;54(3):2033-2044.",
    "greedy": "Yushkevich PA, Pluta J, Wang H, Wisse LEM, Das S, Wolk D. Fast automatic "
              "segmentation of hippocampal subfields and medial temporal lobe subregions in 3 "
              "Tesla and 7 Tesla T2-weighted MRI. Alzheimers Dement. 2016;12(7S):P126-P127.",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. "
          "IEEE Trans Med Imaging. 2010;29(6):1310-1320.",
    "deepbet": "Fisch L, Zumdick S, Barkhau C, et al. deepbet: Fast brain extraction of T1-weighted "
               "MRI using convolutional neural networks. Comput Biol Med. 2024;179:108845.",
    "sri24": "Rohlfing T, Zahr NM, Sullivan EV, Pfefferbaum A. The SRI24 multichannel atlas of "
             "normal adult human brain structure. Hum Brain Mapp. 2010;31(5):798-819.",
    "segresnet": "Myronenko A. 3D MRI brain tumor segmentation using autoencoder regularization. "
                 "BrainLes 2018, LNCS 11384. Springer; 2019:311-320.",
    "monai": "Cardoso MJ, Li W, Brown R, et al. MONAI: An open-source framework for deep learning "
             "in healthcare. arXiv:2211.02701. 2022.",
    "brats2015": "Menze BH, Jakab A, Bauer S, et al. The Multimodal Brain Tumor Image "
                 "Segmentation Benchmark (BRATS). IEEE Trans Med Imaging. 2015;34(10):1993-2024.",
    "brats2021": "Baid U, Ghodasara S, Mohan S, et al. The RSNA-ASNR-MICCAI BraTS 2021 benchmark "
                 "on brain tumor segmentation and radiogenomic classification. arXiv:2107.02314. "
                 "2021.",
    "panoptica": "Kofler F, Möller H, Buchner JA, et al. Panoptica -- instance-wise evaluation "
                 "of 3D semantic and instance segmentation maps. arXiv:2312.02608. 2023.",
    "pyradiomics": "van Griethuysen JJM, Fedorov A, Parmar C, et al. Computational radiomics "
                   "system to decode the radiographic phenotype. Cancer Res. "
                   "2017;77(21):e104-e107.",
    "sksurv": "Pölsterl S. scikit-survival: A library for time-to-event analysis built on top "
              "of scikit-learn. J Mach Learn Res. 2020;21(212):1-6.",
    "deepsurv": "Katzman JL, Shaham U, Cloninger A, Bates J, Jiang T, Kluger Y. DeepSurv: "
                "personalized treatment recommender system using a Cox proportional hazards "
                "deep neural network. BMC Med Res Methodol. 2018;18:24.",
    "deephit": "Lee C, Zame WR, Yoon J, van der Schaar M. DeepHit: A deep learning approach to "
               "survival analysis with competing risks. AAAI. 2018;32(1).",
    "snakemake": "Mölder F, Jablonski KP, Letcher B, et al. Sustainable data analysis with "
                 "Snakemake. F1000Research. 2021;10:33.",
}
CITE_LABEL = {
    "dcm2niix": "Li et al., 2016", "ants": "Avants et al., 2011",
    "greedy": "Yushkevich et al., 2016", "n4": "Tustison et al., 2010",
    "deepbet": "Fisch et al., 2024", "sri24": "Rohlfing et al., 2010",
    "segresnet": "Myronenko, 2018", "monai": "Cardoso et al., 2022",
    "brats2015": "Menze et al., 2015", "brats2021": "Baid et al., 2021",
    "panoptica": "Kofler et al., 2023",
    "pyradiomics": "van Griethuysen et al., 2017", "sksurv": "Pölsterl, 2020",
    "deepsurv": "Katzman et al., 2018", "deephit": "Lee et al., 2018",
    "snakemake": "Mölder et al., 2021",
}
MODEL_NAMES = {
    "cox": "a ridge-penalised Cox proportional-hazards model",
    "coxnet": "an elastic-net Cox model",
    "rsf": "a random survival forest",
    "gbs": "gradient-boosted Cox trees",
    "pca_cox": "PCA followed by a Cox model",
    "age_cox": "a Cox model on age alone (baseline)",
    "age_median": "median regression of survival days on age (baseline)",
    "deepsurv": "DeepSurv (a multilayer perceptron trained on the Cox partial likelihood)",
    "deephit": "DeepHit (single-risk, discrete-time)",
}
# segmentation.tta setting -> what the methods text says (true is the old spelling of "all").
TTA_TEXT = {"lr": "; probabilities were averaged over the input and its left-right mirror",
            "all": "; probabilities were averaged over all eight axis mirrorings of the input"}
MODEL_CITES = {"deepsurv": ["deepsurv"], "deephit": ["deephit"]}
# Distribution names whose installed version stands in when no output records one.
DISTRIBUTIONS = {
    "dcm2niix": ("dcm2niix",), "antspyx": ("antspyx",), "deepbet": ("deepbet",),
    "monai": ("monai",), "torch": ("torch",), "pyradiomics": ("pyradiomics-bhklab", "pyradiomics"),
    "scikit-survival": ("scikit-survival",), "snakemake": ("snakemake",),
}


def installed_version(name: str) -> str | None:
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


class _Cites:
    """Collects citation keys in order of first use and formats them."""

    def __init__(self):
        self.keys: list[str] = []

    def __call__(self, *keys: str) -> str:
        for key in keys:
            if key not in self.keys:
                self.keys.append(key)
        return "(" + "; ".join(CITE_LABEL[k] for k in keys) + ")"


def _subject_dirs(results_dir: Path) -> list[Path]:
    root = results_dir / "subjects"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dcm2niix_version(results_dir: Path) -> str | None:
    """ConversionSoftwareVersion from the first dcm2niix sidecar found."""
    for subject in _subject_dirs(results_dir):
        for sidecar in sorted((subject / "nifti").glob("*.json")):
            if sidecar.name == "ingest.json":
                continue
            info = _read_json(sidecar)
            if isinstance(info, dict) and "dcm2niix" in str(info.get("ConversionSoftware", "")):
                return str(info.get("ConversionSoftwareVersion") or "") or None
    return None


def _ingest_paragraph(config, results_dir, cite) -> str | None:
    dirs = _subject_dirs(results_dir)
    records = [r for r in (_read_json(d / "nifti" / "ingest.json") for d in dirs) if r]
    if not records:
        return None
    ok = sum(1 for r in records if r.get("status") == "ok")
    text = (f"Input data of {len(records)} subjects were ingested ({ok} succeeded, "
            f"{len(records) - ok} failed). ")
    version = _dcm2niix_version(results_dir)
    if version:
        text += (f"DICOM series were converted to NIfTI with dcm2niix {version} "
                 f"{cite('dcm2niix')}, classified into T1, T1ce, T2 and FLAIR by the rules in "
                 f"{config.get('ingest', {}).get('rules', 'the ingest rules file')}, and "
                 "their JSON sidecars were stripped of personal data. ")
    else:
        text += "Subjects were given as NIfTI files (no DICOM conversion was needed). "
    return text.strip()


def _preprocess_paragraph(config, results_dir, cite) -> str | None:
    qc = [d / "preproc" / "qc.json" for d in _subject_dirs(results_dir)]
    qc = [p for p in qc if p.exists()]
    if not qc and not (results_dir / "cohort" / "qc.parquet").exists():
        return None
    pre = config.get("preprocess", {})
    atlas = config.get("atlas", {})
    backend = pre.get("registration_backend", "greedy")
    transform = pre.get("atlas_transform", "rigid")
    ants_tool = (f"ANTsPy (antspyx {installed_version('antspyx') or 'version unknown'}) "
                 f"{cite('ants')}")
    # The same-session pairs run with ANTs under either backend (docs/preprocessing.md).
    atlas_tool = ants_tool if backend == "ants" else (
        f"greedy (picsl-greedy {installed_version('picsl_greedy') or 'version unknown'}) "
        f"{cite('greedy')}")
    atlas_path = str(atlas.get("path", ""))
    atlas_name = "the SRI24 atlas " + cite("sri24") if "sri24" in atlas_path.lower() \
        else f"the template {atlas_path or '(configured)'}"
    spacing = atlas.get("spacing_mm")
    target = ("the whole head against the atlas's skull-on T1"
              if pre.get("atlas_target", "head") == "head"
              else "the skull-stripped T1ce against the atlas brain")
    text = (f"Images were reoriented to LPS; T1, T2 and FLAIR were registered rigidly to the "
            f"T1ce with {ants_tool} and the T1ce {transform}ly to {atlas_name}"
            + (f" resampled to {spacing:g} mm" if isinstance(spacing, (int, float)) else "")
            + f" with {atlas_tool} ({target}), computing the registrations on N4 "
            "bias-corrected images "
            f"{cite('n4')} and composing the transforms so that each image was interpolated "
            "once. ")
    strip = pre.get("skull_strip", "deepbet")
    if strip == "deepbet":
        text += (f"The brain was extracted with deepbet {installed_version('deepbet') or ''} "
                 f"{cite('deepbet')}".replace("  ", " ") + ". ")
    else:
        text += "The brain was extracted with the atlas brain mask. "
    volume = pre.get("brain_volume_ml")
    if volume:
        text += (f"Brain masks outside {volume[0]}-{volume[1]} ml, and image pairs with low "
                 "post-registration similarity, were flagged for quality control. ")
    clip = pre.get("clip_percentiles")
    if clip:
        text += (f"Model inputs were clipped to the {clip[0]}-{clip[1]} intensity percentiles "
                 "within the brain and normalised. ")
    text += f"Quality-control records exist for {len(qc)} subjects."
    return text


STOP_TEXT = {"max_steps": "all steps", "time_budget": "stopped by the time budget"}


def _steps_text(seg, results_dir) -> str:
    """How long the models trained, from their training.json (steps run and why
    they stopped) where present, else the configured limits."""
    runs = {}
    for path in sorted((results_dir / "models" / "segmentation").glob("*/training.json")):
        with contextlib.suppress(OSError, ValueError):
            runs[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
    budget = seg.get("time_budget_min")
    applied = any(r.get("time_budget_applied") for r in runs.values())
    limit = (f"up to {seg.get('max_steps', '?')} optimiser steps or {budget:g} minutes of "
             "wall-clock time per model, whichever came first (the learning-rate decay "
             "following the nearer limit)" if budget and (applied or not runs)
             else f"{seg.get('max_steps', '?')} optimiser steps")
    if not runs:
        return limit
    done = "; ".join(f"{name} {r.get('steps', '?')} steps "
                     f"({STOP_TEXT.get(r.get('stopped_by'), r.get('stopped_by'))})"
                     for name, r in runs.items())
    return f"{limit}: {done}"


def _segmentation_paragraph(config, results_dir, cite) -> str | None:
    seg_files = [d / "seg" / "seg.nii.gz" for d in _subject_dirs(results_dir)]
    n_seg = sum(p.exists() for p in seg_files)
    log_path = results_dir / "models" / "segmentation" / "training_log.csv"
    if not n_seg and not log_path.exists():
        return None
    seg = config.get("segmentation", {})
    network = seg.get("network", "segresnet")
    monai_v = installed_version("monai") or "version unknown"
    torch_v = installed_version("torch") or "version unknown"
    if network == "segresnet":
        net = (f"a SegResNet {cite('segresnet')} (init_filters {seg.get('init_filters', '?')}) "
               f"implemented in MONAI {monai_v} {cite('monai')} on PyTorch {torch_v}")
    else:
        net = f"a {network} network implemented in MONAI {monai_v} {cite('monai')}"
    if seg.get("mode") == "provided":
        text = ("Each subject's expert labels, carried to atlas space, were its segmentation; "
                "no segmentation model was trained"
                + (f", and subjects without labels were segmented by {net} with pretrained "
                   f"weights ({seg['model_path']})" if seg.get("model_path") else "") + ". ")
        return text.strip()
    if seg.get("mode", "train") == "pretrained":
        text = (f"Tumours were segmented in atlas space by {net} with pretrained weights "
                f"({seg.get('model_path')}), applied to every subject. ")
    else:
        text = (f"Tumours were segmented in atlas space by {net}, trained from the "
                f"expert labels with {seg.get('folds', '?')}-fold cross-validation: each "
                "labelled subject was segmented by the fold model that had not seen it, "
                + ("subjects without labels by the mean probability of the fold models"
                   if seg.get("unlabelled", "ensemble") == "ensemble" else
                   "subjects without labels by the final model")
                + (", and a final model was trained on all labelled subjects for new data. "
                   if seg.get("final_model", True) else ". ")
                + "Training used patches of "
                f"{'x'.join(str(v) for v in seg.get('roi_size', []))} voxels, batch size "
                f"{seg.get('batch_size', '?')}, {_steps_text(seg, results_dir)} and learning "
                f"rate {seg.get('learning_rate', '?')}, validating every "
                f"{seg.get('val_every', '?')} steps. ")
    text += ("Inputs were the four normalised sequences (T1, T1ce, T2, FLAIR) and outputs the "
             "nested regions whole tumour (WT), tumour core (TC) and enhancing tumour (ET)"
             + TTA_TEXT.get("all" if seg.get("tta") is True else seg.get("tta"), "") + ". ")
    if seg.get("min_component_fraction"):
        text += (f"Whole-tumour components smaller than {seg['min_component_fraction']:g} of the "
                 "largest were removed. ")
    if seg.get("et_min_volume_mm3"):
        text += (f"Enhancing components smaller than {seg['et_min_volume_mm3']} mm3 were "
                 "relabelled as necrosis. ")
    metrics_path = results_dir / "cohort" / "seg_metrics.parquet"
    if metrics_path.exists():
        text += (f"Segmentations of {n_seg} subjects were scored against the reference labels "
                 f"with the BraTS metrics (Dice, 95th-percentile Hausdorff distance, "
                 f"sensitivity, specificity per region) {cite('brats2015', 'brats2021')}.")
        text += _lesionwise_sentence(metrics_path, cite)
    return text.strip()


def _lesionwise_sentence(metrics_path, cite) -> str:
    """The lesion-wise scoring sentence, when the metrics table holds lesion-wise rows."""
    try:
        names = set(pd.read_parquet(metrics_path, columns=["metric"])["metric"])
    except (OSError, ValueError, KeyError):
        return ""
    if "lw_dice" not in names:
        return ""
    version = installed_version("panoptica") or "version unknown"
    return (" Lesion-wise Dice, 95th-percentile Hausdorff distance and normalised surface Dice "
            "(means over matched lesions) and counts of detected, spurious and missed lesions "
            "were computed as in the official BraTS evaluation since 2023: connected components "
            f"matched one-to-one on Dice, with panoptica {version} {cite('panoptica')}.")


def _radiomics_params_summary(path) -> str:
    """'image types ...; feature classes ...; bin width ...' from a pyradiomics params file."""
    import yaml

    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ""
    parts = []
    if params.get("imageType"):
        parts.append("image types " + ", ".join(sorted(params["imageType"])))
    if params.get("featureClass"):
        parts.append("feature classes " + ", ".join(sorted(params["featureClass"])))
    setting = params.get("setting") or {}
    for key, label in (("binWidth", "bin width"), ("binCount", "bin count"),
                       ("resampledPixelSpacing", "resampled spacing"),
                       ("normalize", "normalisation")):
        if key in setting:
            parts.append(f"{label} {setting[key]}")
    return "; ".join(parts)


def _radiomics_paragraph(config, results_dir, cite) -> str | None:
    path = results_dir / "cohort" / "features.parquet"
    if not path.exists():
        return None
    try:
        columns = pd.read_parquet(path).columns
    except (OSError, ValueError):
        return None
    rad = config.get("radiomics", {})
    n_features = sum(1 for c in columns if c != "subject" and not c.endswith("_empty"))
    params = rad.get("params", "")
    summary = _radiomics_params_summary(params) if params else ""
    mask = "the predicted segmentation" if rad.get("mask", "predicted") == "predicted" \
        else "the provided expert labels"
    text = (f"Radiomic features were computed with pyradiomics "
            f"{installed_version('pyradiomics') or 'version unknown'} {cite('pyradiomics')} "
            f"on the atlas-space sequences {', '.join(rad.get('sequences', []))} within the "
            f"regions {', '.join(rad.get('regions', []))} of {mask}, with the parameter file "
            f"{params}" + (f" ({summary})" if summary else "") + f": {n_features} features "
            "per subject. An empty region gives missing values and an indicator column.")
    return text


def _survival_models(results_dir: Path, config) -> list[str]:
    path = results_dir / "survival" / "metrics.parquet"
    if path.exists():
        try:
            return list(dict.fromkeys(pd.read_parquet(path, columns=["model"])["model"]))
        except (OSError, ValueError, KeyError):
            pass
    root = results_dir / "survival"
    return sorted(p.name for p in root.iterdir() if (p / "predictions.parquet").exists()) \
        if root.is_dir() else []


def _survival_paragraph(config, results_dir, cite) -> str | None:
    models = _survival_models(results_dir, config)
    if not models:
        return None
    surv = config.get("survival", {})
    sksurv_v = installed_version("scikit-survival") or "version unknown"
    cards = {m: _read_json(results_dir / "survival" / m / "card.json") or {} for m in models}
    for card in cards.values():
        sksurv_v = (card.get("libraries") or {}).get("sksurv") or sksurv_v
    described = []
    for model in models:
        name = MODEL_NAMES.get(model, model)
        extra = " " + cite(*MODEL_CITES[model]) if model in MODEL_CITES else ""
        described.append(f"{name}{extra} [{model}]")
    folds = surv.get("folds", "?")
    repeats = surv.get("repeats", 1)
    card = next((c for c in cards.values() if c.get("folds")), {})
    folds, repeats = card.get("folds", folds), card.get("repeats", repeats)
    n = card.get("n")
    covariates = ", ".join(surv.get("covariates", [])) or "none"
    text = (f"Overall survival ({surv.get('time', 'time')}, event column "
            f"{surv.get('event', 'none')}) was modelled"
            + (f" for {n} subjects" if n else "")
            + f" with scikit-survival {sksurv_v} {cite('sksurv')}: "
            + "; ".join(described) + ". "
            f"Covariates: {covariates}; image features: {surv.get('features', 'radiomics')}, "
            f"reduced inside each training fold to the {surv.get('top_n', '?')} with the "
            "largest univariate C-index. "
            f"Every score comes from {folds}-fold cross-validation repeated {repeats} time(s), "
            "each subject predicted by a model that did not train on it: Harrell's and Uno's "
            "C-index, Antolini's time-dependent C, cumulative/dynamic AUC and Brier scores at "
            f"{', '.join(str(h) for h in surv.get('horizons_days', []))} days, the hazard ratio "
            "and log-rank test between risk groups split at the training-fold median risk, and "
            "the BraTS survival-class accuracy (cut-offs "
            f"{_cutoffs_text(surv)}), MSE and "
            "Spearman correlation of predicted days where a model predicts days. Pairs of models "
            "were compared with a paired permutation test of the C-index difference."
            + _cohort_text(results_dir, surv))
    return text


def _cutoffs_text(surv: dict) -> str:
    days = surv.get("class_cutoffs_days")
    if days:
        return ", ".join(f"{d:g}" for d in days) + " days"
    return ", ".join(str(c) for c in surv.get("class_cutoffs_months", [])) + " months of 30.44 days"


def _cohort_text(results_dir: Path, surv: dict) -> str:
    """Who was left out of cross-validation (survival/excluded.json), for the methods."""
    excluded = _read_json(results_dir / "survival" / "excluded.json") or {}
    records = excluded.get("excluded") if isinstance(excluded, dict) else None
    if not isinstance(records, list) or not records:
        return ""
    reasons = pd.Series([r.get("reason", "?") for r in records]).value_counts()
    listed = "; ".join(f"{reason}: {count}" for reason, count in reasons.items())
    subset = surv.get("subset") or {}
    where = (" Cross-validation was restricted to "
             + ", ".join(f"{c} in {list(v)}" for c, v in subset.items()) + ".") if subset else ""
    return (f" {len(records)} subjects were left out of cross-validation ({listed}) and "
            f"predicted by the final models.{where}")


def methods_paragraphs(config: dict, results_dir) -> tuple[list[tuple[str, str]], list[str]]:
    """[(heading, paragraph)] for the stages that ran, and the references cited."""
    results_dir = Path(results_dir)
    cite = _Cites()
    builders = (("Ingest", _ingest_paragraph), ("Preprocessing", _preprocess_paragraph),
                ("Segmentation", _segmentation_paragraph), ("Radiomics", _radiomics_paragraph),
                ("Survival", _survival_paragraph))
    paragraphs = []
    for heading, build in builders:
        text = build(config, results_dir, cite)
        if text:
            paragraphs.append((heading, text))
    if paragraphs:
        paragraphs.append(("Workflow", (
            f"The analysis ran as a Snakemake workflow (snakemake "
            f"{installed_version('snakemake') or 'version unknown'}) {cite('snakemake')} with "
            f"btpipe {_btpipe_version()}; the configuration and software versions are listed "
            "under Provenance.")))
    return paragraphs, [REFERENCES[k] for k in cite.keys]


def _btpipe_version() -> str:
    from .. import __version__

    return __version__


def methods_text(config: dict, results_dir) -> str:
    """Plain-text methods: one paragraph per stage that ran, then the references.

    Paragraphs are separated by blank lines; each starts with its heading and
    a colon. Returns a short note when nothing has run yet.
    """
    paragraphs, refs = methods_paragraphs(config, results_dir)
    if not paragraphs:
        return "No pipeline outputs were found, so there are no methods to describe yet."
    body = "\n\n".join(f"{heading}: {text}" for heading, text in paragraphs)
    if refs:
        body += "\n\nReferences\n\n" + "\n".join(f"{i}. {r}" for i, r in enumerate(refs, 1))
    return body
