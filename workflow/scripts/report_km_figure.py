from btpipe.report.snakemake_figures import write_km_figure
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    write_km_figure(snakemake.input[0], snakemake.params.model, snakemake.output[0])
