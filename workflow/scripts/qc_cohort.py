from btpipe.preprocess.step import qc_cohort_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    qc_cohort_step(list(snakemake.input.qc), list(snakemake.params.subjects), list(snakemake.input.mask),
                   dict(zip(snakemake.params.with_reference, snakemake.input.reference)),
                   snakemake.output[0])
