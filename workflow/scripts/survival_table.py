from btpipe.steps import survival_table_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    survival_table_step(dict(snakemake.params.config), snakemake.input.ingest,
                        snakemake.input.features, snakemake.input.qc,
                        snakemake.output.table, snakemake.output.excluded)
