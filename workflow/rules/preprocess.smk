# Preprocessing: BraTS recipe to the atlas grid, skull stripping, QC, per subject.

def preproc_paths(subject="{subject}"):
    """Every output of preprocess_subject (names as the step reads them)."""
    paths = {
        **{seq: L.preproc(seq, subject) for seq in SEQS},
        **{f"norm_{seq}": L.norm(seq, subject) for seq in SEQS},
        "brain_mask": L.brain_mask(subject),
        "brain_mask_native": L.brain_mask(subject, native=True),
        **{name: L.transform(name, subject)
           for name in ("t1ce_to_atlas", "atlas_to_t1ce", "t1_to_t1ce", "t2_to_t1ce", "flair_to_t1ce")},
        "qc_json": L.qc(subject),
        # the montage goes into `snakemake --report` with its caption
        "qc_png": report(L.qc(subject, "png"), caption="../report/qc_montage.rst",
                         category="Preprocessing QC", subcategory="{subject}"),
    }
    return paths


rule preprocess_subject:
    input:
        nifti=L.nifti_dir(),
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
        L.log("preprocess_subject", "{subject}"),
    benchmark:
        L.benchmark("preprocess_subject", "{subject}")
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
        mask=L.brain_mask(),
        transform=L.transform("t1ce_to_atlas"),
    output:
        L.reference("{kind}"),
    wildcard_constraints:
        kind="seg|brain_mask",
    params:
        preproc_dir=lambda wc: L.preproc_dir(wc.subject),
    log:
        L.log("reference_to_atlas", "{subject}_{kind}"),
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
        "qc": [L.qc(s) for s in subjects],
        "mask": [L.brain_mask(s) for s in subjects],
        "reference": [L.reference("brain_mask", s) for s in subjects if has_reference(s, "brain_mask")],
    }


rule qc_cohort:
    input:
        unpack(qc_inputs),
    output:
        L.cohort("qc"),
    params:
        subjects=lambda wc: passed_ingest(),  # the order of input.mask
        with_reference=lambda wc: [s for s in passed_ingest() if has_reference(s, "brain_mask")],
    log:
        L.log("qc_cohort"),
    localrule: True
    conda:
        "../../envs/preprocess.yaml"
    script:
        "../scripts/qc_cohort.py"


rule preprocess:
    input:
        L.cohort("qc"),
