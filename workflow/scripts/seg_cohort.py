from btpipe.steps import seg_cohort_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    seg_cohort_step(list(snakemake.input.metrics), list(snakemake.input.logs), dict(snakemake.output))
