from btpipe.ingest.step import summary_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    summary_step(list(snakemake.input), snakemake.params.subjects, snakemake.output[0])
