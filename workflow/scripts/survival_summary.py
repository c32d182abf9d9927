from btpipe.survival.step import summary_step
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    summary_step(list(snakemake.params.model_dirs), snakemake.params.out_dir,
                 snakemake.input.table, dict(snakemake.params.survival), snakemake.params.seed)
