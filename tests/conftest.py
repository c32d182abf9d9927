"""Shared fixtures: the real public test data and small helpers.

Before the first test, the set-up the selected tests need (test data and its
manifest, atlas, Python packages, chromium for `browser` tests, SLURM for
`slurm` tests) is checked once; a problem stops the run with one line each
(tests/setup_check.py). Real data is part of the contract: missing data is a
failure, never a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import setup_check
from setup_check import REPO, testdata_dir


# trylast: after -m / -k deselection, so make test-fast needs only what the unit tests need.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    unmarked = [i.nodeid for i in items
                if "tiny_run" in i.fixturenames and not i.get_closest_marker("integration")]
    if unmarked:
        raise pytest.UsageError(f"tests running the whole DAG must be marked integration: "
                                f"{', '.join(unmarked)}")
    if not items or config.option.collectonly:
        return
    groups = {g for g in setup_check.SYSTEM_GROUPS
              if any(i.get_closest_marker(g) for i in items)}
    found = setup_check.problems(groups, data=any("testdata" in i.fixturenames for i in items))
    if found:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for line in setup_check.report(found).splitlines():
            reporter.write_line(line, red=True)
        pytest.exit("test set-up incomplete", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def testdata() -> Path:
    return testdata_dir()  # checked, with the manifest, before the first test


@pytest.fixture(scope="session")
def sri24_atlas() -> Path:
    """The set-up atlas folder's brain (``make atlas``: brain, tissues, skull-on head;
    the shared data's copy has no skull-on T1). Checked before the first test;
    fetch_atlas here only returns the path of the intact copy."""
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
