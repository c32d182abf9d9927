from btpipe.samples import load_samples
from btpipe.survival.step import table_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    table_step(load_samples(dict(snakemake.params.samples)), dict(snakemake.params.survival),
               snakemake.input.ingest, snakemake.input.features, snakemake.input.qc,
               snakemake.output.table, snakemake.output.new, snakemake.output.excluded)
