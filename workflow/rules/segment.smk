# Segmentation: k-fold training (each labelled subject segmented by the model
# that did not see it, unlabelled subjects by the fold ensemble) plus, with
# final_model, a final model on every labelled subject; or a pretrained model
# for everyone; or the subjects' expert labels.

from btpipe.segment import folds as seg_folds
from btpipe.segment.folds import assign_folds
from btpipe.segment.options import inference_options, training_options

SEG = config["segmentation"]
TRAIN_MODE = SEG["mode"] == "train"
PROVIDED_MODE = SEG["mode"] == "provided"
# Training reads every subject from this shared cache of compact crops.
TRAIN_CACHE = L.work("segmentation", "inputs")


def labelled_subjects():
    return [s for s in passed_ingest() if has_reference(s, "seg")]


def seg_fold_of():
    return assign_folds(labelled_subjects(), SEG["folds"], config["seed"])


def norm_images(subject):
    return [L.norm(seq, subject) for seq in SEQS]


def reference_labels(subject):
    return L.reference("seg", subject)


def train_inputs(wildcards):
    folds = seg_fold_of()
    subjects = (seg_folds.training_subjects(folds, wildcards.fold)
                + seg_folds.monitoring_subjects(folds, wildcards.fold))
    return {
        "images": [p for s in subjects for p in norm_images(s)],
        "labels": [reference_labels(s) for s in subjects],
        "folds": L.seg_models("folds.json"),
        "ingest": ingest_summary_path(),
    }


def model_for(subject):
    """Model files that segment ``subject`` (none: its expert labels are its segmentation)."""
    if TRAIN_MODE:
        names = seg_folds.segmenting_models(subject, seg_fold_of(), SEG["unlabelled"])
        return [L.seg_model(name) for name in names]
    if PROVIDED_MODE and has_reference(subject, "seg"):
        return []
    return [SEG["model_path"]]


def provided_labels(subject):
    return [reference_labels(subject)] if PROVIDED_MODE and has_reference(subject, "seg") else []


rule seg_folds:
    input:
        ingest_summary_path(),
    output:
        L.seg_models("folds.json"),
    params:
        folds=lambda wc: seg_fold_of(),
        k=SEG["folds"],
        seed=config["seed"],
    log:
        L.log("seg_folds"),
    localrule: True
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_folds.py"


rule seg_train:
    input:
        unpack(train_inputs),
    output:
        model=L.seg_model("{fold}"),
        log_csv=L.seg_models("{fold}", "training_log.csv"),
        summary=L.seg_models("{fold}", "training.json"),
    params:
        train=lambda wc: seg_folds.training_subjects(seg_fold_of(), wc.fold),
        monitor=lambda wc: seg_folds.monitoring_subjects(seg_fold_of(), wc.fold),
        # device, num_workers, keep_checkpoints: read by the script, never a reason to retrain
        options=training_options(SEG, config["labels"], config["deterministic"]),
        seed=config["seed"],
        work_dir=lambda wc: L.work("segmentation", wc.fold),
        cache_dir=TRAIN_CACHE,
    log:
        L.log("seg_train", "{fold}"),
    benchmark:
        L.benchmark("seg_train", "{fold}")
    threads: config["threads"]["seg_train"]
    # Fold models first: their subjects' segmentation waits for them, while the final
    # model (for new data) can train beside those segmentation jobs.
    priority: lambda wc: 0 if wc.fold == "final" else 1
    resources:
        **step_resources("seg_train"),
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_train.py"


rule segment_subject:
    input:
        models=lambda wc: model_for(wc.subject),
        provided=lambda wc: provided_labels(wc.subject),
        images=lambda wc: norm_images(wc.subject),
        native=L.nifti_dir(),
        transform=L.transform("atlas_to_t1ce"),
    output:
        **{name: L.seg(name=name) for name in ("seg", "prob", "uncertainty", "seg_native")},
    params:
        # device: read by the script, never a reason to re-segment
        options=inference_options(SEG, config["labels"], config["deterministic"]),
        preproc_dir=lambda wc: L.preproc_dir(wc.subject),
    log:
        L.log("segment_subject", "{subject}"),
    benchmark:
        L.benchmark("segment_subject", "{subject}")
    threads: config["threads"]["segment"]
    resources:
        **step_resources("segment_subject"),
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/segment.py"


rule seg_score:
    input:
        pred=L.seg(),
        ref=L.reference("seg"),
    output:
        L.seg_metrics(),
    params:
        labels=config["labels"],
        metric_sets=config["scoring"]["metrics"],
    log:
        L.log("seg_score", "{subject}"),
    group:
        "subject_post"
    resources:
        **step_resources("seg_score"),
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_score.py"


def scored_subjects():
    """Labelled subjects whose segmentation came from a model (provided labels score 1)."""
    return [] if PROVIDED_MODE else labelled_subjects()


def seg_cohort_inputs(wildcards):
    names = trained_models()
    return {"metrics": [L.seg_metrics(s) for s in scored_subjects()],
            "logs": [L.seg_models(name, "training_log.csv") for name in names]}


def trained_models():
    return seg_folds.fold_model_names(seg_fold_of(), SEG["final_model"]) if TRAIN_MODE else []


rule seg_cohort:
    input:
        unpack(seg_cohort_inputs),
    output:
        metrics=L.cohort("seg_metrics"),
        summary=L.cohort("seg_summary"),
        training_log=L.seg_models("training_log.csv"),
    params:
        subjects=lambda wc: scored_subjects(),  # the order of input.metrics
        models=lambda wc: trained_models(),  # the order of input.logs
    log:
        L.log("seg_cohort"),
    localrule: True
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/seg_cohort.py"


rule segment:
    input:
        rules.seg_cohort.output,
        lambda wc: [L.seg(s) for s in passed_ingest()],
