from btpipe.demo.generate import write_sheet
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    write_sheet(snakemake.params.out_dir, snakemake.params.subjects)
