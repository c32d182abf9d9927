"""The reduced demo through Snakemake's SLURM executor on a real single-node
cluster (Debian slurm-wlm + munge, started here, accounting off), with the
shipped profile; outputs must equal the local run's (both deterministic)."""

from __future__ import annotations

import os
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pipeline_helpers import REPO, snakemake, write_config
from slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The session's set-up check has found slurm-wlm and munge (installed as root).
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_run")
    write_config(workdir)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        proc = snakemake(workdir, "--profile", str(REPO / "profiles/slurm"),
                         "--slurm-status-command", "squeue", "--slurm-no-account",
                         "--slurm-init-seconds-before-status-checks", "2",
                         "--latency-wait", "10", "--jobs", "4", timeout=3000)
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    return {"workdir": workdir, "log": proc.stdout + proc.stderr, "cluster": cluster}


def test_every_cluster_job_ran_under_slurm(slurm_run):
    # Snakemake 9 with the SLURM executor prints a "rule X:" block only for
    # local jobs; remote ones show as a submission line and a "Finished" line.
    log = slurm_run["log"]
    local = {"demo_sheet", "ingest_summary", "qc_cohort", "seg_folds", "seg_cohort",
             "features_cohort", "slice_coverage", "survival_table", "survival_folds",
             "survival_summary", "survival_submission", "report_seg_figure",
             "report_km_figure", "all"}
    ran_locally = set(re.findall(r"^local(?:rule|checkpoint) (\w+):", log, re.M))
    assert ran_locally <= local, f"rules run outside SLURM: {ran_locally - local}"
    finished = re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", log, re.M)
    remote_rules = [rule for rule in finished if rule not in local]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert remote_rules and submitted, "no job was sent to SLURM"
    # A job group is one SLURM job, so submissions <= remote jobs; every
    # submission must have run to a clean exit on this cluster.
    assert len(submitted) <= len(remote_rules)
    assert set(submitted) <= slurm_run["cluster"].jobs_completed()


def _nifti_arrays(results, pattern):
    return {p.relative_to(results): np.asarray(nib.load(p).dataobj)
            for p in sorted(results.glob(pattern))}


@pytest.mark.parametrize("pattern", ["subjects/*/preproc/brain_mask.nii.gz",
                                     "subjects/*/preproc/t1ce.nii.gz",
                                     "subjects/*/seg/seg.nii.gz"])
def test_slurm_images_equal_local(slurm_run, tiny_run, pattern):
    local = _nifti_arrays(tiny_run["results"], pattern)
    remote = _nifti_arrays(slurm_run["workdir"] / "results", pattern)
    assert local.keys() == remote.keys() and local
    for key in local:
        assert np.array_equal(local[key], remote[key]), key


@pytest.mark.parametrize("table", ["cohort/features.parquet", "cohort/seg_metrics.parquet",
                                   "survival/cox/predictions.parquet"])
def test_slurm_tables_equal_local(slurm_run, tiny_run, table):
    local = pd.read_parquet(tiny_run["results"] / table)
    remote = pd.read_parquet(slurm_run["workdir"] / "results" / table)
    pd.testing.assert_frame_equal(local, remote)
