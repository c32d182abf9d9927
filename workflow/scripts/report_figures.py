from btpipe.report.snakemake_figures import write_report_figures
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    write_report_figures(snakemake.params.results_dir, snakemake.output.seg, snakemake.output.km,
                         snakemake.params.km_model)
