# Anchor-slice bags per subject and the cohort feature tables.

SL = config["slices"]


rule slice_bag:
    input:
        images=[L.norm(seq) for seq in SEQS],
        seg=radiomics_mask,
    output:
        L.slice_bag(),
    params:
        before=SL["before"],
        after=SL["after"],
        size=SL["size"],
        margin=SL["margin"],
        labels=config["labels"],
    log:
        L.log("slice_bag", "{subject}"),
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
        lambda wc: [L.radiomics(s) for s in passed_ingest()],
    output:
        L.cohort("features"),
    params:
        subjects=lambda wc: passed_ingest(),  # the order of the inputs
    log:
        L.log("features_cohort"),
    localrule: True
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/features_cohort.py"


rule slice_coverage:
    input:
        lambda wc: [L.slice_bag(s) for s in passed_ingest()],
    output:
        L.cohort("slice_coverage"),
    params:
        subjects=lambda wc: passed_ingest(),  # the order of the inputs
    log:
        L.log("slice_coverage"),
    localrule: True
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/slice_coverage.py"


rule features:
    input:
        rules.features_cohort.output,
        rules.slice_coverage.output,
