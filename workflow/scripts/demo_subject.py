from btpipe.demo.generate import make_subject
from btpipe.workflow_support import step_log

with step_log(snakemake.log[0], snakemake.wildcards.subject):
    make_subject(snakemake.params.out_dir, snakemake.wildcards.subject, snakemake.params.index,
                 seed=snakemake.params.seed, voxel_scale=snakemake.params.voxel_scale,
                 template_cache=snakemake.params.template_cache)
