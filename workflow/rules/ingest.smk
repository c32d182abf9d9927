# Ingest: DICOM or NIfTI in, the four sequences out (de-identified), per subject.
# A subject with bad input records its error in ingest.json and is dropped from
# the later steps; the report lists it. The summary is a checkpoint for that.


def ingest_inputs(wildcards):
    inputs = {"rules": config["ingest"]["rules"]}
    paths = subject_inputs(row(wildcards.subject))
    if is_demo_subject(wildcards.subject):
        inputs["dicom"] = f"{DEMO_DIR}/dicom/{wildcards.subject}"
    for seq in SEQS:
        if paths.get(seq) and os.path.exists(paths[seq]):
            inputs[seq] = paths[seq]
    return inputs


def ingest_fingerprint(wildcards):
    """Content fingerprint of a user DICOM folder: edits deep inside it rerun
    ingest, which a folder's own mtime would miss. Demo folders are rule
    outputs, tracked by Snakemake itself."""
    paths = subject_inputs(row(wildcards.subject))
    if is_demo_subject(wildcards.subject) or not paths.get("dicom_dir"):
        return ""
    return dicom_fingerprint(paths["dicom_dir"])


rule ingest_subject:
    input:
        unpack(ingest_inputs),
    output:
        directory(L.nifti_dir()),
    params:
        inputs=lambda wc: subject_inputs(row(wc.subject)),
        fingerprint=ingest_fingerprint,
        missing_sequence=config["ingest"]["missing_sequence"],
    log:
        L.log("ingest_subject", "{subject}"),
    benchmark:
        L.benchmark("ingest_subject", "{subject}")
    group:
        "subject_prep"
    resources:
        **step_resources("ingest_subject"),
    conda:
        "../../envs/ingest.yaml"
    script:
        "../scripts/ingest.py"


checkpoint ingest_summary:
    input:
        [L.nifti_dir(s) for s in SUBJECTS],
    output:
        ingest_summary_path(),
    params:
        subjects=SUBJECTS,
    log:
        L.log("ingest_summary"),
    localrule: True
    conda:
        "../../envs/ingest.yaml"
    script:
        "../scripts/ingest_summary.py"


rule ingest:
    input:
        ingest_summary_path(),
