# Segmentation: k-fold training (each labelled subject segmented by the model
# that did not see it) plus a final model, or a pretrained model for everyone.

from btpipe.segment.folds import assign_folds

SEG = config["segmentation"]
MODELS_DIR = f"{R}/models/segmentation"
TRAIN_MODE = SEG["mode"] == "train"


def labelled_subjects():
    return [s for s in passed_ingest() if has_reference(s, "seg")]


def seg_fold_of():
    return assign_folds(labelled_subjects(), SEG["folds"], config["seed"])


def training_subjects(fold):
    folds = seg_fold_of()
    if fold == "final":
        return sorted(folds)
    k = int(fold.removeprefix("fold"))
    return sorted(s for s, f in folds.items() if f != k)


def monitoring_subjects(fold):
    """Held-out subjects scored during training for the learning curve only:
    no checkpoint is chosen on them, the last step's weights are kept."""
    if fold == "final":
        return []
    k = int(fold.removeprefix("fold"))
    return sorted(s for s, f in seg_fold_of().items() if f == k)


def norm_images(subject):
    return [f"{subject_dir(subject)}/preproc/norm/{seq}.nii.gz" for seq in SEQS]


def train_inputs(wildcards):
    train, monitor = training_subjects(wildcards.fold), monitoring_subjects(wildcards.fold)
    return {
        "images": [p for s in train + monitor for p in norm_images(s)],
        "labels": [f"{subject_dir(s)}/preproc/reference/seg.nii.gz" for s in train + monitor],
        "folds": f"{MODELS_DIR}/folds.json",
        "ingest": ingest_summary_path(),
    }


def model_for(subject):
    if not TRAIN_MODE:
        return SEG["model_path"]
    folds = seg_fold_of()
    name = f"fold{folds[subject]}" if subject in folds else "final"
    return f"{MODELS_DIR}/{name}/model.pt"


rule seg_folds:
    input:
        ingest_summary_path(),
    output:
        f"{MODELS_DIR}/folds.json",
    params:
        folds=lambda wc: seg_fold_of(),
        k=SEG["folds"],
    log:
        f"{R}/logs/seg_folds.log",
    localrule: True
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_folds.py"


rule seg_train:
    input:
        unpack(train_inputs),
    output:
        model=f"{MODELS_DIR}/{{fold}}/model.pt",
        log_csv=f"{MODELS_DIR}/{{fold}}/training_log.csv",
    params:
        train=lambda wc: training_subjects(wc.fold),
        monitor=lambda wc: monitoring_subjects(wc.fold),
        options={**SEG, "labels": config["labels"], "deterministic": config["deterministic"]},
        seed=config["seed"],
        work_dir=lambda wc: f"{R}/work/segmentation/{wc.fold}",
    log:
        f"{R}/logs/seg_train/{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/seg_train/{{fold}}.tsv"
    threads: config["threads"]["seg_train"]
    resources:
        **step_resources("seg_train"),
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_train.py"


rule segment_subject:
    input:
        model=lambda wc: model_for(wc.subject),
        images=lambda wc: norm_images(wc.subject),
        native=f"{R}/subjects/{{subject}}/nifti",
        transform=f"{R}/subjects/{{subject}}/preproc/transforms/atlas_to_t1ce.mat",
    output:
        seg=f"{R}/subjects/{{subject}}/seg/seg.nii.gz",
        prob=f"{R}/subjects/{{subject}}/seg/prob.nii.gz",
        uncertainty=f"{R}/subjects/{{subject}}/seg/uncertainty.nii.gz",
        seg_native=f"{R}/subjects/{{subject}}/seg/seg_native.nii.gz",
    params:
        options={**SEG, "labels": config["labels"], "deterministic": config["deterministic"]},
        preproc_dir=lambda wc: f"{subject_dir(wc.subject)}/preproc",
    log:
        f"{R}/logs/segment_subject/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/segment_subject/{{subject}}.tsv"
    threads: config["threads"]["segment"]
    resources:
        **step_resources("segment_subject"),
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/segment.py"


rule seg_score:
    input:
        pred=f"{R}/subjects/{{subject}}/seg/seg.nii.gz",
        ref=f"{R}/subjects/{{subject}}/preproc/reference/seg.nii.gz",
    output:
        f"{R}/subjects/{{subject}}/seg/metrics.json",
    params:
        labels=config["labels"],
    log:
        f"{R}/logs/seg_score/{{subject}}.log",
    group:
        "subject_post"
    resources:
        **step_resources("seg_score"),
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_score.py"


def seg_cohort_inputs(wildcards):
    subjects = labelled_subjects()
    logs = ([f"{MODELS_DIR}/fold{k}/training_log.csv" for k in sorted(set(seg_fold_of().values()))]
            + [f"{MODELS_DIR}/final/training_log.csv"]) if TRAIN_MODE else []
    return {"metrics": [f"{subject_dir(s)}/seg/metrics.json" for s in subjects],
            "logs": logs}


rule seg_cohort:
    input:
        unpack(seg_cohort_inputs),
    output:
        metrics=f"{R}/cohort/seg_metrics.parquet",
        summary=f"{R}/cohort/seg_summary.parquet",
        training_log=f"{MODELS_DIR}/training_log.csv",
    log:
        f"{R}/logs/seg_cohort.log",
    localrule: True
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_cohort.py"


rule segment:
    input:
        rules.seg_cohort.output,
        lambda wc: [f"{subject_dir(s)}/seg/seg.nii.gz" for s in passed_ingest()],
