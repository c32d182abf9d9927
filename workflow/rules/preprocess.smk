# Preprocessing: BraTS recipe to the atlas grid, skull stripping, QC, per subject.

PREPROC_OUT = {
    **{seq: f"{{sdir}}/preproc/{seq}.nii.gz" for seq in SEQS},
    **{f"norm_{seq}": f"{{sdir}}/preproc/norm/{seq}.nii.gz" for seq in SEQS},
    "brain_mask": "{sdir}/preproc/brain_mask.nii.gz",
    "brain_mask_native": "{sdir}/preproc/brain_mask_native.nii.gz",
    "t1ce_to_atlas": "{sdir}/preproc/transforms/t1ce_to_atlas.mat",
    "atlas_to_t1ce": "{sdir}/preproc/transforms/atlas_to_t1ce.mat",
    **{f"{seq}_to_t1ce": f"{{sdir}}/preproc/transforms/{seq}_to_t1ce.mat"
       for seq in ("t1", "t2", "flair")},
    "qc_json": "{sdir}/preproc/qc.json",
    "qc_png": "{sdir}/preproc/qc.png",
}


def preproc_paths(subject="{subject}"):
    paths = {k: v.format(sdir=subject_dir(subject)) for k, v in PREPROC_OUT.items()}
    # The montage goes into `snakemake --report` with its caption.
    paths["qc_png"] = report(paths["qc_png"], caption="../report/qc_montage.rst",
                             category="Preprocessing QC", subcategory="{subject}")
    return paths


rule preprocess_subject:
    input:
        nifti=f"{R}/subjects/{{subject}}/nifti",
        atlas=config["atlas"]["path"],
        # the skull-on atlas, only for preprocess.atlas_target: head
        head_atlas=[str(p) for p in [head_atlas_file(config)] if p is not None],
    output:
        **preproc_paths(),
    params:
        options=lambda wc: {
            **config["preprocess"],
            "spacing_mm": config["atlas"]["spacing_mm"],
            "space": row(wc.subject).get("space") or "native",
            "seed": config["seed"],
            "deterministic": config["deterministic"],
        },
    log:
        f"{R}/logs/preprocess_subject/{{subject}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess_subject/{{subject}}.tsv"
    threads: config["threads"]["preprocess"]
    resources:
        **step_resources("preprocess_subject"),
    conda:
        "../../envs/preprocess.yaml"
    script:
        "../scripts/preprocess.py"


rule reference_to_atlas:
    """Expert labels or a reference brain mask, native T1ce grid -> atlas grid."""
    input:
        native=lambda wc: row(wc.subject)[wc.kind],
        mask=f"{R}/subjects/{{subject}}/preproc/brain_mask.nii.gz",
        transform=f"{R}/subjects/{{subject}}/preproc/transforms/t1ce_to_atlas.mat",
    output:
        f"{R}/subjects/{{subject}}/preproc/reference/{{kind}}.nii.gz",
    wildcard_constraints:
        kind="seg|brain_mask",
    params:
        preproc_dir=lambda wc: f"{subject_dir(wc.subject)}/preproc",
    log:
        f"{R}/logs/reference_to_atlas/{{subject}}_{{kind}}.log",
    group:
        "subject_prep"
    resources:
        **step_resources("reference_to_atlas"),
    conda:
        "../../envs/preprocess.yaml"
    script:
        "../scripts/reference_to_atlas.py"


def qc_inputs(wildcards):
    subjects = passed_ingest()
    return {
        "qc": [f"{subject_dir(s)}/preproc/qc.json" for s in subjects],
        "mask": [f"{subject_dir(s)}/preproc/brain_mask.nii.gz" for s in subjects],
        "reference": [f"{subject_dir(s)}/preproc/reference/brain_mask.nii.gz"
                      for s in subjects if has_reference(s, "brain_mask")],
    }


rule qc_cohort:
    input:
        unpack(qc_inputs),
    output:
        f"{R}/cohort/qc.parquet",
    log:
        f"{R}/logs/qc_cohort.log",
    localrule: True
    conda:
        "../../envs/preprocess.yaml"
    script:
        "../scripts/qc_cohort.py"


rule preprocess:
    input:
        f"{R}/cohort/qc.parquet",
