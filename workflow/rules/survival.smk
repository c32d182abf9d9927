# Survival lab: one table, one set of folds shared by every model. Subjects without
# a usable outcome are left out of cross-validation and predicted by the final models.

from btpipe.ingest.discover import clinical_paths
from btpipe.survival.registry import FOLD_KEYS, MODELS as SURVIVAL_MODELS, SUMMARY_KEYS, \
    section_for_model, section_keys
from btpipe.survival.submission import is_brats_cohort

SURV = config["survival"]
SURVIVAL_ENABLED = SURV["enabled"]
# Models on the feature table write final.pkl; slice-bag and 3D models read
# per-subject images and write final.pt.
TABLE_MODELS = [m for m in SURV["models"] if SURVIVAL_MODELS[m].input == "features"]
IMAGE_MODELS = [m for m in SURV["models"] if SURVIVAL_MODELS[m].input != "features"]


def model_name_pattern(names):
    return "|".join(names) if names else "__none__"


def image_model_inputs(wildcards):
    subjects = passed_ingest()
    if SURVIVAL_MODELS[wildcards.model].input == "bags":
        return [L.slice_bag(s) for s in subjects]
    return [L.norm(seq, s) for s in subjects for seq in SEQS]


def clinical_source():
    if config.get("brats_dir"):
        return clinical_paths(config.get("clinical"))
    return [config["samples"]]


def write_submission():
    """Challenge-format CSVs: survival.submission true, or auto and BraTS case ids."""
    choice = SURV["submission"]
    return choice is True or (choice == "auto" and is_brats_cohort(SUBJECTS))


# What the table step reads of the config: where the subjects and their clinical data
# are, and which columns make the outcome, covariates and subset.
SURV_TABLE = {k: SURV[k] for k in ("time", "event", "covariates", "features", "exclude_qc_flags",
                                   "subset")}
SAMPLES_CONFIG = {**{k: config.get(k) for k in ("samples", "brats_dir", "clinical", "demo")},
                  "survival": SURV_TABLE}


rule survival_table:
    input:
        clinical=clinical_source(),
        features=L.cohort("features"),
        qc=L.cohort("qc"),
        ingest=ingest_summary_path(),
    output:
        table=L.survival("input.parquet"),
        new=L.survival("new_subjects.parquet"),
        excluded=L.survival("excluded.json"),
    params:
        samples=SAMPLES_CONFIG,
        survival=SURV_TABLE,
    log:
        L.log("survival_table"),
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_table.py"


rule survival_folds:
    input:
        table=L.survival("input.parquet"),
    output:
        L.survival("folds.json"),
    params:
        survival=section_keys(SURV, FOLD_KEYS),
        seed=config["seed"],
    log:
        L.log("survival_folds"),
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_folds.py"


rule survival_model:
    input:
        table=L.survival("input.parquet"),
        new=L.survival("new_subjects.parquet"),
        folds=L.survival("folds.json"),
    wildcard_constraints:
        model=model_name_pattern(TABLE_MODELS),
    output:
        predictions=L.survival("{model}", "predictions.parquet"),
        predictions_new=L.survival("{model}", "predictions_new.parquet"),
        card=L.survival("{model}", "card.json"),
        fold_metrics=L.survival("{model}", "fold_metrics.parquet"),
        final=L.survival("{model}", "final.pkl"),
    params:
        # this model's own options only: adding a model to the list reruns no other model
        survival=lambda wc: section_for_model(SURV, wc.model),
        seed=config["seed"],
        out_dir=L.survival(),
    log:
        L.log("survival_model", "{model}"),
    benchmark:
        L.benchmark("survival_model", "{model}")
    threads: 1
    resources:
        **step_resources("survival_model"),
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_model.py"


rule survival_image_model:
    input:
        table=L.survival("input.parquet"),
        new=L.survival("new_subjects.parquet"),
        folds=L.survival("folds.json"),
        images=image_model_inputs,
    wildcard_constraints:
        model=model_name_pattern(IMAGE_MODELS),
    output:
        predictions=L.survival("{model}", "predictions.parquet"),
        predictions_new=L.survival("{model}", "predictions_new.parquet"),
        card=L.survival("{model}", "card.json"),
        fold_metrics=L.survival("{model}", "fold_metrics.parquet"),
        final=L.survival("{model}", "final.pt"),
    params:
        survival=lambda wc: section_for_model(SURV, wc.model),
        seed=config["seed"],
        out_dir=L.survival(),
        subjects=lambda wc: passed_ingest(),  # the order of input.images
        pretrain_cache=L.work("encoder_pretraining"),
    log:
        L.log("survival_model", "{model}"),
    benchmark:
        L.benchmark("survival_model", "{model}")
    threads: config["threads"]["survival_image_model"]
    resources:
        **step_resources("survival_model"),
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_model.py"


rule survival_summary:
    input:
        predictions=expand(L.survival("{model}", "predictions.parquet"), model=SURV["models"]),
        table=L.survival("input.parquet"),
    output:
        metrics=L.survival("metrics.parquet"),
        comparisons=L.survival("comparisons.parquet"),
        embeddings=L.survival("embeddings.parquet"),
    params:
        survival=section_keys(SURV, SUMMARY_KEYS),
        out_dir=L.survival(),
        model_dirs=[L.survival(m) for m in SURV["models"]],
        seed=config["seed"],
    log:
        L.log("survival_summary"),
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_summary.py"


rule survival_submission:
    input:
        predictions=L.survival("{model}", "predictions.parquet"),
        predictions_new=L.survival("{model}", "predictions_new.parquet"),
    output:
        L.survival("submission", "{model}.csv"),
    log:
        L.log("survival_submission", "{model}"),
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_submission.py"


def survival_outputs():
    submissions = [L.survival("submission", f"{m}.csv") for m in SURV["models"]] \
        if write_submission() else []
    return [*rules.survival_summary.output, *submissions]


rule survival:
    input:
        survival_outputs(),
