"""Glue used by the Snakefile and workflow/scripts (kept out of the rules).

Nothing here holds pipeline logic: fingerprints for caching, logging set-up
for a step, thread settings, and provenance collection.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

PROVENANCE_PACKAGES = ("btpipe", "snakemake", "numpy", "nibabel", "pydicom", "dcm2niix",
                       "antspyx", "deepbet", "torch", "monai", "pyradiomics-bhklab",
                       "scikit-survival", "scikit-learn", "lifelines", "pandas")


def dicom_fingerprint(folder) -> str:
    """Digest of every file's relative path, size and mtime under a folder
    (the workflow's own marker files left out: touching them changes no input)."""
    from .io import is_pipeline_marker

    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(
            is_pipeline_marker(part) for part in p.relative_to(folder).parts)):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def configure_threads(threads: int, deterministic: bool) -> None:
    """Thread counts for ITK, BLAS and torch; one thread when deterministic
    because multithreaded registration sums in a varying order."""
    n = 1 if deterministic else max(1, int(threads))
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(n)


PROGRESS_LOGGER = "btpipe.progress"


def _job_label(log_path) -> str:
    """'seg_train/fold0' for logs/seg_train/fold0.log: names the job on the console."""
    path = Path(log_path)
    return f"{path.parent.name}/{path.stem}" if path.parent.name != "logs" else path.stem


@contextlib.contextmanager
def step_log(log_path, subject=None):
    """Send this step's logging to its log file; log the error before it propagates.

    Messages of the "btpipe.progress" logger (long steps' progress lines, e.g.
    training's step, loss and ETA) also go to stderr, prefixed with the job,
    which is where Snakemake's console shows what a script job prints.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"%(asctime)s [{_job_label(log_path)}] %(message)s",
                                           datefmt="%H:%M:%S"))
    root, progress = logging.getLogger(), logging.getLogger(PROGRESS_LOGGER)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    progress.addHandler(console)
    try:
        yield logging.getLogger("btpipe")
    except Exception as exc:
        where = f"subject {subject}: " if subject and subject not in str(exc) else ""
        logging.getLogger("btpipe").error("%s%s\n%s", where, exc, traceback.format_exc())
        print(f"btpipe error: {where}{exc}", file=sys.stderr)
        raise
    finally:
        root.removeHandler(handler)
        progress.removeHandler(console)
        handler.close()


def package_versions(names=PROVENANCE_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(repo=None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo or os.getcwd(),
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_info(config: dict) -> dict:
    import datetime

    import btpipe
    from btpipe.config import config_digest

    return {"btpipe_version": btpipe.__version__, "git_commit": git_commit(),
            "config_digest": config_digest(config), "packages": package_versions(),
            "python": sys.version.split()[0],
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def remove_stale_temp_files(results_dir) -> list[Path]:
    """Delete temporary files a killed job left (atomic writes never rename
    them into place), so nothing partial stays under results/."""
    from .io import TMP_PREFIX

    removed = []
    root = Path(results_dir)
    if root.is_dir():
        for path in root.rglob(f"{TMP_PREFIX}*"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
