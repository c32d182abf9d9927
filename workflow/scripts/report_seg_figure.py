from btpipe.report.snakemake_figures import write_seg_figure
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    write_seg_figure(snakemake.input[0], snakemake.output[0])
