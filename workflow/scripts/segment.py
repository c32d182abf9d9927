from btpipe.segment.options import runtime_options
from btpipe.segment.step import segment_step
from btpipe.workflow_support import configure_threads, step_log

opts = {**snakemake.params.options, **runtime_options(snakemake.config["segmentation"])}
configure_threads(snakemake.threads, opts["deterministic"])
with step_log(snakemake.log[0], snakemake.wildcards.subject):
    segment_step(snakemake.wildcards.subject, list(snakemake.input.models),
                 list(snakemake.input.images), snakemake.input.native, snakemake.params.preproc_dir,
                 dict(snakemake.output), opts, provided=list(snakemake.input.provided))
