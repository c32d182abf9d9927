from btpipe import io
from btpipe.features.radiomics import extract_subject
from btpipe.workflow_support import step_log

seqs = list(snakemake.params.sequences)
with step_log(snakemake.log[0], snakemake.wildcards.subject):
    row = extract_subject(snakemake.wildcards.subject, dict(zip(seqs, snakemake.input.images)),
                          snakemake.input.seg, labels=snakemake.params.labels,
                          params_path=snakemake.input.params_file, sequences=seqs,
                          regions=list(snakemake.params.regions),
                          brain_mask_path=snakemake.input.brain_mask)
    io.write_parquet(snakemake.output[0], row)
