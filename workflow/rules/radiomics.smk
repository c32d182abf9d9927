# Radiomics and shape/location features per subject (pyradiomics).

RAD = config["radiomics"]


def radiomics_mask(wildcards):
    if RAD["mask"] == "provided":
        return L.reference("seg", wildcards.subject)
    return L.seg(wildcards.subject)


rule radiomics_subject:
    input:
        images=[L.preproc(seq) for seq in RAD["sequences"]],
        seg=radiomics_mask,
        brain_mask=L.brain_mask(),
        params_file=RAD["params"],
    output:
        L.radiomics(),
    params:
        sequences=RAD["sequences"],
        regions=RAD["regions"],
        labels=config["labels"],
    log:
        L.log("radiomics_subject", "{subject}"),
    benchmark:
        L.benchmark("radiomics_subject", "{subject}")
    threads: 1
    resources:
        **step_resources("radiomics_subject"),
    conda:
        "../../envs/radiomics.yaml"
    script:
        "../scripts/radiomics.py"


rule radiomics:
    input:
        lambda wc: [L.radiomics(s) for s in passed_ingest()],
