"""The report's main figures as PNG files, for Snakemake's own `--report`
(the HTML report embeds the same figures as data URIs)."""

from __future__ import annotations

import base64
import pandas as pd

from .. import io
from .figures import kaplan_meier_panel, seg_boxplots


def _write_data_uri(uri: str, path) -> None:
    io.write_bytes(path, base64.b64decode(uri.split(",", 1)[1]))


def write_seg_figure(metrics_path, png) -> None:
    """Box plots of the out-of-fold segmentation scores."""
    _write_data_uri(seg_boxplots(pd.read_parquet(metrics_path)), png)


def write_km_figure(predictions_path, model, png) -> None:
    """Kaplan-Meier curves of one model's out-of-fold risk groups."""
    _write_data_uri(kaplan_meier_panel(pd.read_parquet(predictions_path), model), png)
