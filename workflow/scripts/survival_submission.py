from btpipe.survival.submission import write_submission
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    write_submission(snakemake.input.predictions, snakemake.input.predictions_new,
                     snakemake.output[0])
