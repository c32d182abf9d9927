# Survival lab: one table, one set of folds shared by every model.

from btpipe.survival.models import MODELS as SURVIVAL_MODELS

SURV = config["survival"]
SURV_DIR = f"{R}/survival"
# Models on the feature table write final.pkl; slice-bag and 3D models read
# per-subject images and write final.pt.
TABLE_MODELS = [m for m in SURV["models"] if SURVIVAL_MODELS[m].input == "features"]
IMAGE_MODELS = [m for m in SURV["models"] if SURVIVAL_MODELS[m].input != "features"]


def model_name_pattern(names):
    return "|".join(names) if names else "__none__"


def image_model_inputs(wildcards):
    subjects = passed_ingest()
    if SURVIVAL_MODELS[wildcards.model].input == "bags":
        return [f"{subject_dir(s)}/slices.npz" for s in subjects]
    return [f"{subject_dir(s)}/preproc/norm/{seq}.nii.gz" for s in subjects for seq in SEQS]


def clinical_source():
    if config.get("brats_dir"):
        return [config["clinical"]] if config.get("clinical") else []
    return [config["samples"]]


rule survival_table:
    input:
        clinical=clinical_source(),
        features=f"{R}/cohort/features.parquet",
        qc=f"{R}/cohort/qc.parquet",
        ingest=ingest_summary_path(),
    output:
        table=f"{SURV_DIR}/input.parquet",
        excluded=f"{SURV_DIR}/excluded.json",
    params:
        config=config,
    log:
        f"{R}/logs/survival_table.log",
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_table.py"


rule survival_folds:
    input:
        table=f"{SURV_DIR}/input.parquet",
    output:
        f"{SURV_DIR}/folds.json",
    params:
        survival=SURV,
        seed=config["seed"],
    log:
        f"{R}/logs/survival_folds.log",
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_folds.py"


rule survival_model:
    input:
        table=f"{SURV_DIR}/input.parquet",
        folds=f"{SURV_DIR}/folds.json",
    wildcard_constraints:
        model=model_name_pattern(TABLE_MODELS),
    output:
        predictions=f"{SURV_DIR}/{{model}}/predictions.parquet",
        card=f"{SURV_DIR}/{{model}}/card.json",
        fold_metrics=f"{SURV_DIR}/{{model}}/fold_metrics.parquet",
        final=f"{SURV_DIR}/{{model}}/final.pkl",
    params:
        survival=SURV,
        seed=config["seed"],
        out_dir=SURV_DIR,
    log:
        f"{R}/logs/survival_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/survival_model/{{model}}.tsv"
    threads: 1
    resources:
        **step_resources("survival_model"),
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_model.py"


rule survival_image_model:
    input:
        table=f"{SURV_DIR}/input.parquet",
        folds=f"{SURV_DIR}/folds.json",
        images=image_model_inputs,
    wildcard_constraints:
        model=model_name_pattern(IMAGE_MODELS),
    output:
        predictions=f"{SURV_DIR}/{{model}}/predictions.parquet",
        card=f"{SURV_DIR}/{{model}}/card.json",
        fold_metrics=f"{SURV_DIR}/{{model}}/fold_metrics.parquet",
        final=f"{SURV_DIR}/{{model}}/final.pt",
    params:
        survival=SURV,
        seed=config["seed"],
        out_dir=SURV_DIR,
        results_dir=R,
    log:
        f"{R}/logs/survival_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/survival_model/{{model}}.tsv"
    threads: config["threads"]["survival_image_model"]
    resources:
        **step_resources("survival_model"),
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_image_model.py"


rule survival_summary:
    input:
        predictions=expand(f"{SURV_DIR}/{{model}}/predictions.parquet", model=SURV["models"]),
        table=f"{SURV_DIR}/input.parquet",
    output:
        metrics=f"{SURV_DIR}/metrics.parquet",
        comparisons=f"{SURV_DIR}/comparisons.parquet",
        embeddings=f"{SURV_DIR}/embeddings.parquet",
    params:
        survival=SURV,
        out_dir=SURV_DIR,
        model_dirs=[f"{SURV_DIR}/{m}" for m in SURV["models"]],
        seed=config["seed"],
    log:
        f"{R}/logs/survival_summary.log",
    localrule: True
    conda:
        "../../envs/survival.yaml"
    script:
        "../scripts/survival_summary.py"


rule survival:
    input:
        rules.survival_summary.output,
