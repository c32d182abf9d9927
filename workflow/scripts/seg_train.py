from btpipe.steps import seg_train_step
from btpipe.workflow_support import configure_threads, step_log

opts = dict(snakemake.params.options)
configure_threads(snakemake.threads, opts["deterministic"])
with step_log(snakemake.log[0]):
    seg_train_step(list(snakemake.params.train), list(snakemake.params.monitor),
                   list(snakemake.input.images), list(snakemake.input.labels),
                   snakemake.output.model, opts, snakemake.params.seed, snakemake.params.work_dir)
