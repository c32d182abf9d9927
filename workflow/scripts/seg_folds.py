from btpipe.segment.folds import write_folds
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    write_folds(snakemake.output[0], dict(snakemake.params.folds), snakemake.params.k,
                seed=snakemake.params.seed)
