# Anchor-slice bags per subject and the cohort feature tables.

SL = config["slices"]


rule slice_bag:
    input:
        images=expand(f"{R}/subjects/{{{{subject}}}}/preproc/norm/{{seq}}.nii.gz", seq=SEQS),
        seg=radiomics_mask,
    output:
        f"{R}/subjects/{{subject}}/slices.npz",
    params:
        before=SL["before"],
        after=SL["after"],
        size=SL["size"],
        margin=SL["margin"],
        labels=config["labels"],
    log:
        f"{R}/logs/slice_bag/{{subject}}.log",
    group:
        "subject_post"
    resources:
        **step_resources("slice_bag"),
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/slice_bag.py"


rule features_cohort:
    input:
        lambda wc: [f"{subject_dir(s)}/radiomics.parquet" for s in passed_ingest()],
    output:
        f"{R}/cohort/features.parquet",
    log:
        f"{R}/logs/features_cohort.log",
    localrule: True
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/features_cohort.py"


rule slice_coverage:
    input:
        lambda wc: [f"{subject_dir(s)}/slices.npz" for s in passed_ingest()],
    output:
        f"{R}/cohort/slice_coverage.parquet",
    log:
        f"{R}/logs/slice_coverage.log",
    localrule: True
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/slice_coverage.py"


rule features:
    input:
        rules.features_cohort.output,
        rules.slice_coverage.output,
