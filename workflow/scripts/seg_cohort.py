from btpipe.segment.step import seg_cohort_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    seg_cohort_step(list(snakemake.params.subjects), list(snakemake.input.metrics),
                    list(snakemake.params.models), list(snakemake.input.logs), dict(snakemake.output))
