from btpipe.steps import reference_to_atlas_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0], snakemake.wildcards.subject):
    reference_to_atlas_step(snakemake.input.native, snakemake.params.preproc_dir, snakemake.output[0])
