from btpipe.survival.lab import summarise
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    summarise(list(snakemake.params.model_dirs), snakemake.params.out_dir,
              {**dict(snakemake.params.survival), "seed": snakemake.params.seed})
