from btpipe.ingest.step import ingest_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0], snakemake.wildcards.subject):
    ingest_step(snakemake.wildcards.subject, dict(snakemake.params.inputs), snakemake.output[0],
                snakemake.input.rules, missing_sequence=snakemake.params.missing_sequence)
