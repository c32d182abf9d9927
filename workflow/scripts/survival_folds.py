from btpipe.survival.step import folds_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    folds_step(snakemake.input.table, dict(snakemake.params.survival), snakemake.params.seed,
               snakemake.output[0])
