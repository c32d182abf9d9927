from btpipe.preprocess.step import reference_to_atlas_step
from btpipe.workflow_support import step_log

subject = snakemake.wildcards.subject
# Expert labels must use the configured convention; a brain mask is 0/1.
labels = snakemake.config["labels"] if snakemake.wildcards.kind == "seg" else None
with step_log(snakemake.log[0], subject):
    reference_to_atlas_step(snakemake.input.native, snakemake.params.preproc_dir,
                            snakemake.output[0], labels=labels, subject=subject)
