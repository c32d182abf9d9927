import btpipe
from btpipe.features.slices import build_slice_bag, save_slice_bag
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0], snakemake.wildcards.subject):
    bag = build_slice_bag(dict(zip(btpipe.SEQUENCES, snakemake.input.images)), snakemake.input.seg,
                          snakemake.params.labels, before=tuple(snakemake.params.before),
                          after=tuple(snakemake.params.after), size=snakemake.params.size,
                          margin=snakemake.params.margin)
    save_slice_bag(snakemake.output[0], bag)
