from btpipe.steps import segment_step
from btpipe.workflow_support import configure_threads, step_log

opts = dict(snakemake.params.options)
configure_threads(snakemake.threads, opts["deterministic"])
with step_log(snakemake.log[0], snakemake.wildcards.subject):
    segment_step(snakemake.wildcards.subject, snakemake.input.model, list(snakemake.input.images),
                 snakemake.input.native, snakemake.params.preproc_dir, dict(snakemake.output), opts)
