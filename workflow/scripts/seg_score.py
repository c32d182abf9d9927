from btpipe import io
from btpipe.segment.metrics import score_files
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0], snakemake.wildcards.subject):
    io.write_json(snakemake.output[0],
                  score_files(snakemake.input.pred, snakemake.input.ref, snakemake.params.labels,
                              metric_sets=snakemake.params.metric_sets))
