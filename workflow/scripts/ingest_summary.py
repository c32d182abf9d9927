from btpipe.steps import ingest_summary
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    ingest_summary(list(snakemake.input), snakemake.params.subjects, snakemake.output[0])
