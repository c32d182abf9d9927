"""Running the real Snakemake workflow on a tiny demo cohort in a temp folder.

One pipeline run is shared by the integration tests (session fixture in
conftest.py); tests that change inputs work on a copy of its folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# A tiny configuration: 5 subjects at 2x coarser native voxels, a 3 mm atlas
# grid, a small SegResNet trained for a few hundred steps on 32^3 patches.
TINY_CONFIG = {
    "demo": {"enabled": True, "out_dir": "demo", "subjects": 5, "seed": 0, "voxel_scale": 2.0},
    "atlas": {"path": str(REPO / "resources/atlas/sri24/t1_brain.nii.gz"), "spacing_mm": 3.0},
    "ingest": {"rules": str(REPO / "resources/ingest/sequence_rules.yaml")},
    "segmentation": {"folds": 2, "final_model": True, "init_filters": 8, "roi_size": [32, 32, 32],
                     "batch_size": 2, "max_steps": 120, "val_every": 40, "learning_rate": 0.003,
                     "tta": False},
    "radiomics": {"params": str(REPO / "resources/radiomics/params.yaml"),
                  "regions": ["WT", "TC", "ET"]},
    "slices": {"before": [1, 1, 1], "after": [1, 1, 1], "size": 32},
    "survival": {"folds": 2, "models": ["cox", "rsf"], "top_n": 5},
    "deterministic": True,
}


RESOURCE_PATHS = {
    "atlas": {"path": str(REPO / "resources/atlas/sri24/t1_brain.nii.gz")},
    "ingest": {"rules": str(REPO / "resources/ingest/sequence_rules.yaml")},
    "radiomics": {"params": str(REPO / "resources/radiomics/params.yaml")},
}


def write_config(workdir: Path, overrides: dict | None = None, tiny: bool = True) -> Path:
    """config.yaml in workdir: the shipped one with absolute resource paths,
    shrunk to the tiny configuration unless tiny=False."""
    from btpipe.config import deep_update

    with open(REPO / "config.yaml", encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    config = deep_update(config, RESOURCE_PATHS)
    if tiny:
        config = deep_update(config, TINY_CONFIG)
    if overrides:
        config = deep_update(config, overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_recipe_config(workdir: Path, recipe: str, overrides: dict | None = None) -> Path:
    """config.yaml in workdir: a shipped recipe with absolute resource paths and overrides."""
    from btpipe.config import deep_update

    with open(REPO / "recipes" / recipe, encoding="utf-8") as fh:
        config = deep_update(yaml.safe_load(fh), overrides or {})
    resources = {("atlas", "path"): "resources/atlas/sri24/t1_brain.nii.gz",
                 ("ingest", "rules"): "resources/ingest/sequence_rules.yaml",
                 ("radiomics", "params"): "resources/radiomics/params.yaml"}
    for (section, key), default in resources.items():
        config.setdefault(section, {})
        config[section][key] = str(REPO / config[section].get(key, default))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args, check=True, timeout=1800) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}")
    return proc


def planned_jobs(workdir: Path, *args) -> dict[str, int]:
    """Rule -> job count from a dry run's job table."""
    proc = snakemake(workdir, "-n", *args)
    text = proc.stdout + proc.stderr
    counts = {}
    in_table = False
    for line in text.splitlines():
        if re.match(r"^job\s+count", line.strip()):
            in_table = True
            continue
        if in_table:
            match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s+(\d+)\s*$", line)
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a finished run keeping timestamps, so Snakemake sees it as up to date."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    return dst
