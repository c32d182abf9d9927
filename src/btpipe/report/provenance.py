"""The report's methods and provenance sections: what ran, with which versions and settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from .. import __version__
from .blocks import fmt, missing, table, text
from .inputs import Inputs
from .methods import installed_version, methods_paragraphs


PACKAGES = ("numpy", "pandas", "nibabel", "antspyx", "deepbet", "torch", "monai",
            "pyradiomics", "scikit-survival", "lifelines", "snakemake", "dcm2niix", "matplotlib",
            "panoptica")


def methods_section(config: dict, results_dir: Path) -> dict:
    paragraphs, refs = methods_paragraphs(config, results_dir)
    if not paragraphs:
        return {"id": "methods", "title": "Methods", "blocks": [missing("Methods (nothing has run yet)")]}
    return {"id": "methods", "title": "Methods",
            "blocks": [text("Generated from the outputs and configuration of this run.", "note"),
                       {"kind": "methods", "paragraphs": paragraphs, "references": refs}]}


def benchmark_table(results_dir: Path) -> pd.DataFrame | None:
    """Per-rule run times from Snakemake benchmark files benchmarks/{rule}/{wildcards}.tsv."""
    root = Path(results_dir) / "benchmarks"
    if not root.is_dir():
        return None
    import csv

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):  # Snakemake writes NA or - when it could not measure
            return float("nan")

    rows = []
    # The csv module, not pandas: hundreds of one-line files, read in milliseconds.
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                records = list(csv.DictReader(fh, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        for rec in records:
            rows.append({"rule": rule, "s": number(rec.get("s")), "max_rss": number(rec.get("max_rss"))})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    g = frame.groupby("rule")
    out = pd.DataFrame({"jobs": g.size(), "total (s)": g["s"].sum(), "median (s)": g["s"].median(),
                        "max (s)": g["s"].max(), "max RSS (MB)": g["max_rss"].max()})
    return out.sort_values("total (s)", ascending=False).reset_index()


def _default_run_info(config: dict) -> dict:
    from ..config import config_digest

    return {"btpipe version": __version__, "config digest": config_digest(config),
            "python": sys.version.split()[0],
            "packages": {name: installed_version(name) or "not installed" for name in PACKAGES}}


def provenance_section(config: dict, run_info: dict | None, results_dir: Path, inp: Inputs,
                       build_seconds: float) -> dict:
    info = dict(run_info) if run_info else _default_run_info(config)
    blocks = []
    if not run_info:
        blocks.append(text("No run information was passed; versions below are those installed where "
                            "the report was built.", "note"))
    scalars = [(str(k).replace("_", " "), fmt(v)) for k, v in info.items() if not isinstance(v, dict)]
    scalars.append(("report build time", f"{build_seconds:.1f} s (before writing)"))
    blocks.append(table(pd.DataFrame(scalars, columns=["item", "value"]), caption="Run"))
    for key, value in info.items():
        if isinstance(value, dict):
            blocks.append(table(pd.DataFrame([(k, fmt(v)) for k, v in value.items()],
                                              columns=["name", "value"]),
                                 caption=str(key).replace("_", " ")))
    bench = benchmark_table(results_dir)
    if bench is not None:
        blocks.append(table(bench, caption="Run time per rule (Snakemake benchmark files)",
                             sortable=True))
    else:
        blocks.append(missing("Per-rule run times (benchmarks/**/*.tsv)"))
    try:
        import yaml

        config_text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    except Exception:
        config_text = json.dumps(config, indent=2, default=str)
    blocks.append({"kind": "details", "summary": "Configuration",
                   "blocks": [{"kind": "pre", "text": config_text}]})
    if inp.problems:
        blocks.append(table(pd.DataFrame({"input": inp.problems}),
                             caption="Inputs that exist but could not be read"))
    return {"id": "provenance", "title": "Provenance", "blocks": blocks}
