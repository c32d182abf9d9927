# The demo cohort: written per subject, then the samples sheet from their truth.

if DEMO_DIR is not None:

    rule demo_subject:
        output:
            dicom=directory(f"{DEMO_DIR}/dicom/{{subject}}"),
            seg=f"{DEMO_DIR}/truth/{{subject}}/seg.nii.gz",
            brain_mask=f"{DEMO_DIR}/truth/{{subject}}/brain_mask.nii.gz",
            info=f"{DEMO_DIR}/truth/{{subject}}/truth.json",
        params:
            index=lambda wc: demo_layout.subject_ids(config["demo"]["subjects"]).index(wc.subject),
            seed=config["demo"]["seed"],
            voxel_scale=config["demo"]["voxel_scale"],
            out_dir=DEMO_DIR,
            template_cache=L.work("demo_template"),  # built by the first job, loaded by the rest
        log:
            f"{DEMO_DIR}/logs/demo_subject/{{subject}}.log",
        resources:
            **step_resources("demo_subject"),
        conda:
            "../../envs/demo.yaml"
        script:
            "../scripts/demo_subject.py"

    rule demo_sheet:
        input:
            info=expand(f"{DEMO_DIR}/truth/{{subject}}/truth.json",
                        subject=demo_layout.subject_ids(config["demo"]["subjects"])),
        output:
            sheet=f"{DEMO_DIR}/samples.tsv",
        params:
            out_dir=DEMO_DIR,
            subjects=demo_layout.subject_ids(config["demo"]["subjects"]),
        log:
            f"{DEMO_DIR}/logs/demo_sheet.log",
        localrule: True
        conda:
            "../../envs/demo.yaml"
        script:
            "../scripts/demo_sheet.py"
