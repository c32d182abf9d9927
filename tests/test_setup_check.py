"""The test set-up check: one line per problem, before any test runs.

Missing test data, a changed data file, a missing system package: each is
reported once, naming what is missing, where it was looked for and how to
provide it, both by the Makefile's set-up step and inside pytest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import make_data_manifest
import pytest
import setup_check
from setup_check import MANIFEST, REPO, data_problems, read_manifest

VENV = Path(sys.executable).parent.parent


def path_without(bin_dir: Path, *commands: str) -> str:
    """A PATH of one folder linking every command on the current PATH but `commands`."""
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = bin_dir / entry.name
            if (entry.name not in commands and not link.exists() and entry.is_file()
                    and os.access(entry.path, os.X_OK)):
                link.symlink_to(entry.path)
    return str(bin_dir)


def test_make_test_setup_names_missing_chromium_in_one_line(tmp_path):
    # A machine without chromium and without apt-get to install it.
    path = path_without(tmp_path / "bin", "chromium", "apt-get")
    # -o: the venv and atlas are there already; run the set-up step's own recipe.
    proc = subprocess.run(["make", "-s", f"VENV={VENV}", "-o", f"{VENV}/.btpipe-installed",
                           "-o", "resources/atlas/sri24/t1_brain.nii.gz", "test-setup"],
                          cwd=REPO, env={**os.environ, "PATH": path}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "chromium" in line]
    assert len(lines) == 1, proc.stderr
    assert "missing chromium" in lines[0] and "on PATH" in lines[0]
    assert "apt-get install -y chromium" in lines[0]
    assert "no test was run" in proc.stderr and "Traceback" not in proc.stderr


def test_without_root_each_package_gets_a_sudo_line(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lines = setup_check.system_problems(setup_check.SYSTEM_GROUPS)
    for package in setup_check.SYSTEM_PACKAGES:
        [line] = [x for x in lines if x.startswith(f"missing {package.name}:")]
        assert f"sudo apt-get install -y {package.name}" in line
    assert any("needs root" in x and "-m 'not slurm'" in x for x in lines)
    assert setup_check.system_problems(set()) == []  # unit tests need no system package


def test_missing_data_folder_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("BTPIPE_TESTDATA", str(tmp_path / "nowhere"))
    [line] = data_problems()
    assert str(tmp_path / "nowhere") in line and "BTPIPE_TESTDATA" in line
    assert "data_manifest.tsv" in line
    monkeypatch.delenv("BTPIPE_TESTDATA")
    assert "../shared/data beside the checkout" in data_problems(tmp_path / "absent")[0]


@pytest.fixture
def data_copy(testdata, tmp_path) -> Path:
    """The manifest's files linked into a fresh root (the real files stay untouched)."""
    root = tmp_path / "data"
    for row in read_manifest():
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / row["path"]).symlink_to(testdata.joinpath(row["path"]))
    return root


def test_data_copy_with_every_file_passes(data_copy):
    assert data_problems(data_copy) == []


def test_missing_and_changed_files_are_one_line_each(data_copy):
    rows = read_manifest()
    (data_copy / rows[0]["path"]).unlink()
    (data_copy / rows[1]["path"]).unlink()
    [line] = data_problems(data_copy)
    assert line.startswith(f"test data: 2 of {len(rows)} files")
    assert rows[0]["path"] in line and rows[1]["path"] in line and str(data_copy) in line
    for row in rows[:2]:
        (data_copy / row["path"]).write_bytes(b"not the public file")
    [line] = data_problems(data_copy)
    assert "2 files" in line and "SHA-256" in line and rows[0]["path"] in line
    assert data_problems(data_copy, checksums=False) == []


def test_manifest_lists_every_file_the_tests_read(testdata):
    rows = read_manifest()
    assert rows == make_data_manifest.manifest_rows(testdata), \
        f"{MANIFEST.name} is out of date: run python tests/make_data_manifest.py"
    for rel in make_data_manifest.referenced_paths():
        assert any(r["path"] == rel or r["path"].startswith(rel + "/") for r in rows), rel
    for row in rows:
        assert row["source"] and testdata.joinpath(row["licence"]).is_file()


def test_testdata_path_parsing():
    import ast

    def path(code):
        [chain] = make_data_manifest._division_chains(ast.parse(code))
        return make_data_manifest._testdata_path(chain)

    assert path('testdata / "mri" / "case" / name / "x"') == "mri/case"
    assert path('ctx.testdata / "a/b"') == "a/b"
    assert path('tmp_path / "a"') is None


def test_pytest_stops_once_before_the_first_test_without_data(tmp_path):
    # Without the shared data, every test that reads it would fail the same way.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_ingest_discover.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BTPIPE_TESTDATA": str(tmp_path / "none")})
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("test data: no folder at") == 1
    assert not re.search(r"\d+ (passed|failed|errors?)\b", out)
