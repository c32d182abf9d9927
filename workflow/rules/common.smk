# Helpers shared by the rules: samples, paths, the subjects that passed ingest.

import json
import os
from pathlib import Path

import btpipe
from btpipe.config import head_atlas_file, validate_config
from btpipe.demo import layout as demo_layout
from btpipe.errors import ConfigError
from btpipe.layout import Layout
from btpipe.samples import config_problems, effective_labels, load_samples, subject_inputs
from btpipe.workflow_support import dicom_fingerprint

validate_config(config)  # fills nested defaults exactly as `btpipe validate` does

R = config["results_dir"].rstrip("/")
L = Layout(R)  # every path under results_dir (btpipe.layout)
SEQS = list(btpipe.SEQUENCES)
SAMPLES = load_samples(config)
config["labels"] = effective_labels(config, SAMPLES)  # `auto` -> the convention the names settle
SUBJECTS = list(SAMPLES.index)
if config_problems(config, SAMPLES):
    raise ConfigError("; ".join(config_problems(config, SAMPLES)))
DEMO_DIR = config["demo"]["out_dir"].rstrip("/") if config["demo"]["enabled"] else None


wildcard_constraints:
    subject=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    fold=r"fold\d+|final",
    model=r"[A-Za-z0-9_]+",


def row(subject):
    return SAMPLES.loc[subject]


def is_demo_subject(subject):
    return DEMO_DIR is not None and subject in demo_layout.subject_ids(config["demo"]["subjects"])


def has_reference(subject, column):
    value = row(subject).get(column) if column in SAMPLES.columns else None
    return isinstance(value, str) and value != ""


def ingest_summary_path():
    return L.cohort("ingest")


def passed_ingest():
    """Subjects whose ingest succeeded (the others appear in the report).

    The ingest summary is a checkpoint: until it exists the DAG cannot know
    which subjects fail. A dry run shows the plan for every subject instead,
    so `snakemake -n` on a clean clone lists every rule.
    """
    import pandas as pd

    if workflow.dryrun and not os.path.exists(ingest_summary_path()):
        return SUBJECTS
    table = pd.read_parquet(checkpoints.ingest_summary.get().output[0])
    ok = set(table.loc[table["status"] == "ok", "subject"])
    return [s for s in SUBJECTS if s in ok]


# Memory (MB) and run time (minutes) per job, measured on the demo and on a
# BraTS-size case (docs/benchmarks.md); SLURM uses them, local runs cap on mem_mb.
RESOURCES = {
    "demo_subject": {"mem_mb": 2000, "runtime": 10},
    "ingest_subject": {"mem_mb": 2000, "runtime": 15},
    "preprocess_subject": {"mem_mb": 4000, "runtime": 30},
    "reference_to_atlas": {"mem_mb": 1500, "runtime": 10},
    # 5.2 GB peak at the recipes' size (init 16, 128^3, batch 2) on CPU, flat in the cohort
    # size (bench/bench_scale.py); the demo's 48^3 patches take 1.6 GB
    "seg_train": {"mem_mb": 6500, "runtime": 720},
    "segment_subject": {"mem_mb": 4000, "runtime": 30},
    "seg_score": {"mem_mb": 2000, "runtime": 10},
    "radiomics_subject": {"mem_mb": 3000, "runtime": 30},
    "slice_bag": {"mem_mb": 2000, "runtime": 10},
    "survival_model": {"mem_mb": 4000, "runtime": 120},
    "report": {"mem_mb": 4000, "runtime": 30},
}


GPU_RULES = {"seg_train", "segment_subject"}


def step_resources(name):
    """Resources of a rule; GPU rules ask for one GPU when segmentation.device
    is cuda (on SLURM: --gpus=1), and run on the CPU otherwise."""
    resources = dict(RESOURCES[name])
    if name in GPU_RULES and config["segmentation"]["device"] == "cuda":
        resources["gpu"] = 1
    return resources
