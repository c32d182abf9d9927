from btpipe import io
from btpipe.features.cohort import merge_features
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0]):
    paths = dict(zip(snakemake.params.subjects, snakemake.input))
    io.write_parquet(snakemake.output[0], merge_features(paths))
