from btpipe.report import build_report
from btpipe.workflow_support import run_info, step_log

with step_log(snakemake.log[0]):
    config = dict(snakemake.params.config)
    build_report(snakemake.params.results_dir, config, snakemake.output[0], run_info=run_info(config))
