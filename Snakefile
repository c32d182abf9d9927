# btpipe: brain-tumour MRI -> segmentation, radiomics, survival models, report.
# Rules hold no logic: each names inputs, outputs, params, resources and log,
# and calls one btpipe function through workflow/scripts.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/radiomics.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/survival.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        L.report("report.html"),
        report_figures(),
        survival_outputs() if SURVIVAL_ENABLED else [],
        # The final segmentation model is a deliverable (it segments new subjects).
        [L.seg_model("final")] if TRAIN_MODE and SEG["final_model"] else [],


onstart:
    # A job killed mid-write leaves only a hidden temp file; clear those first.
    # Only the controller does this, never a job (it would race other jobs).
    from btpipe.workflow_support import remove_stale_temp_files

    if workflow.is_main_process:
        remove_stale_temp_files(R)
