from btpipe.survival.step import model_step
from btpipe.workflow_support import configure_threads, step_log

configure_threads(snakemake.threads, False)
with step_log(snakemake.log[0]):
    model_step(snakemake.wildcards.model, snakemake.input.table, snakemake.input.new,
               snakemake.input.folds, dict(snakemake.params.survival), snakemake.params.seed,
               snakemake.params.out_dir, images=list(snakemake.input.get("images", [])),
               subjects=list(snakemake.params.get("subjects", [])),
               pretrain_cache=snakemake.params.get("pretrain_cache"))
