from btpipe.steps import qc_cohort_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    qc_cohort_step(list(snakemake.input.qc), list(snakemake.input.mask),
                   list(snakemake.input.reference), snakemake.output[0])
