# Radiomics and shape/location features per subject (pyradiomics).

RAD = config["radiomics"]


def radiomics_mask(wildcards):
    if RAD["mask"] == "provided":
        return f"{R}/subjects/{wildcards.subject}/preproc/reference/seg.nii.gz"
    return f"{R}/subjects/{wildcards.subject}/seg/seg.nii.gz"


rule radiomics_subject:
    input:
        images=expand(f"{R}/subjects/{{{{subject}}}}/preproc/{{seq}}.nii.gz", seq=RAD["sequences"]),
        seg=radiomics_mask,
        brain_mask=f"{R}/subjects/{{subject}}/preproc/brain_mask.nii.gz",
        params_file=RAD["params"],
    output:
        f"{R}/subjects/{{subject}}/radiomics.parquet",
    params:
        sequences=RAD["sequences"],
        regions=RAD["regions"],
        labels=config["labels"],
    log:
        f"{R}/logs/radiomics_subject/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/radiomics_subject/{{subject}}.tsv"
    threads: 1
    resources:
        **step_resources("radiomics_subject"),
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/radiomics.py"


rule radiomics:
    input:
        lambda wc: [f"{subject_dir(s)}/radiomics.parquet" for s in passed_ingest()],
