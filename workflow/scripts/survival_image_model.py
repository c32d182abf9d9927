from btpipe.steps import survival_image_model_step
from btpipe.workflow_support import configure_threads, step_log

configure_threads(snakemake.threads, False)
with step_log(snakemake.log[0]):
    survival_image_model_step(snakemake.wildcards.model, snakemake.input.table,
                              snakemake.input.folds, dict(snakemake.params.survival),
                              snakemake.params.seed, snakemake.params.out_dir,
                              snakemake.params.results_dir)
