from pathlib import Path

from btpipe.preprocess import preprocess_subject
from btpipe.workflow_support import configure_threads, step_log

opts = dict(snakemake.params.options)
configure_threads(snakemake.threads, opts["deterministic"])
with step_log(snakemake.log[0], snakemake.wildcards.subject):
    preprocess_subject(
        snakemake.wildcards.subject, snakemake.input.nifti,
        str(Path(snakemake.output.qc_json).parent), snakemake.input.atlas,
        spacing_mm=opts["spacing_mm"], registration_backend=opts["registration_backend"],
        atlas_transform=opts["atlas_transform"], write_n4=opts["write_n4"],
        skull_strip=opts["skull_strip"], brain_volume_ml=tuple(opts["brain_volume_ml"]),
        clip_percentiles=tuple(opts["clip_percentiles"]), space=opts["space"],
        seed=opts["seed"], deterministic=opts["deterministic"],
        registration_effort=opts["registration_effort"], atlas_target=opts["atlas_target"])
