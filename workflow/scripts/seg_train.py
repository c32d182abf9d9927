from btpipe.segment.options import runtime_options
from btpipe.segment.step import seg_train_step
from btpipe.workflow_support import configure_threads, step_log

opts = {**snakemake.params.options, **runtime_options(snakemake.config["segmentation"])}
configure_threads(snakemake.threads, opts["deterministic"])
with step_log(snakemake.log[0]):
    seg_train_step(list(snakemake.params.train), list(snakemake.params.monitor),
                   list(snakemake.input.images), list(snakemake.input.labels),
                   snakemake.output.model, opts, snakemake.params.seed, snakemake.params.work_dir,
                   snakemake.params.cache_dir)
