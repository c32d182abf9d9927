"""The report's main figures as PNG files, for Snakemake's own `--report`
(the HTML report embeds the same figures as data URIs)."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd

from .. import io
from .figures import kaplan_meier_panel, seg_boxplots


def _write_data_uri(uri: str, path) -> None:
    io.write_bytes(path, base64.b64decode(uri.split(",", 1)[1]))


def write_report_figures(results_dir, seg_png, km_png, km_model) -> None:
    results = Path(results_dir)
    _write_data_uri(seg_boxplots(pd.read_parquet(results / "cohort/seg_metrics.parquet")),
                    seg_png)
    predictions = pd.read_parquet(results / "survival" / km_model / "predictions.parquet")
    _write_data_uri(kaplan_meier_panel(predictions, km_model), km_png)
