from btpipe import io
from btpipe.features.cohort import slice_coverage_table
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    paths = dict(zip(snakemake.params.subjects, snakemake.input))
    io.write_parquet(snakemake.output[0], slice_coverage_table(paths))
