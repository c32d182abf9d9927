"""The survival lab outside the workflow: ``btpipe survival`` on any table.

:func:`run_lab` prepares the table, folds it, runs every configured model on the same folds
and writes the summaries, the same files the workflow's survival stage writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from .compare import metric_summary, summarise, write_prepared
from .data import default_feature_columns, prepare_table
from .fit import Inputs, run_model
from .folds import folds_and_holdout, write_folds
from .registry import DEFAULT_PARAMS, ResolvedModel, resolve_params


def _load_table(table) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    if not path.exists():
        raise InputError("survival table not found", path=path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    from ..samples import read_table

    return read_table(path)


def run_lab(table, time_col, event_col, covariates, feature_cols, params, out_dir, seed=0) -> dict:
    """prepare + folds + every model in params['models'] + summarise.

    Returns {"folds": path, "models": {name: dir}, "metrics": path,
    "comparisons": path, "embeddings": path, "summary": DataFrame}.
    """
    params = resolve_params(params)
    params.setdefault("seed", seed)
    out_dir = Path(out_dir)
    frame = _load_table(table)
    X, y, ids = prepare_table(frame, time_col, event_col, covariates, feature_cols)
    if X.shape[1] == 0:
        raise ConfigError("survival lab has no covariates or features to model")
    folds, holdout = folds_and_holdout(y, ids, params, seed)
    keep = ~np.isin(ids, holdout)
    write_folds(out_dir / "folds.json", folds, holdout,
                meta={"seed": seed, "n": int(keep.sum()), "n_events": int(y["event"][keep].sum())})
    write_prepared(out_dir / "table.parquet", X, y)
    model_dirs = {}
    for name in params["models"]:
        run_model(ResolvedModel.from_params(name, params, seed), Inputs(X), y, ids, folds, out_dir,
                  holdout_ids=holdout)
        model_dirs[name] = out_dir / name
    summarise(list(model_dirs.values()), out_dir, params, X=X, y=y)
    summary = metric_summary(pd.read_parquet(out_dir / "metrics.parquet"))
    return {"folds": out_dir / "folds.json", "models": model_dirs, "metrics": out_dir / "metrics.parquet",
            "comparisons": out_dir / "comparisons.parquet", "embeddings": out_dir / "embeddings.parquet",
            "summary": summary}


def _config_section(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return dict(data.get("survival", data))


def survival_cli(args) -> dict:
    """``btpipe survival``: args carries table, time, event, features, models, folds,
    repeats, seed, config, out (and optionally id, covariates)."""
    section = _config_section(args.config) if getattr(args, "config", None) else {}
    frame = _load_table(args.table)
    id_col = getattr(args, "id", None)
    if id_col:
        frame = frame.rename(columns={id_col: "subject"})
    elif "subject" not in frame.columns and frame.shape[1] and frame.iloc[:, 0].is_unique \
            and frame.columns[0] != args.time:
        frame = frame.rename(columns={frame.columns[0]: "subject"})
    covariates = _split(getattr(args, "covariates", None)) or list(section.get("covariates") or [])
    covariates = [c for c in covariates if c in frame.columns]
    features = _split(args.features) or default_feature_columns(frame, args.time, args.event, covariates)
    params = {k: v for k, v in section.items() if k in DEFAULT_PARAMS}
    for key in ("folds", "repeats"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    if getattr(args, "models", None):
        params["models"] = _split(args.models)
    result = run_lab(frame, args.time, args.event, covariates, features, params, args.out,
                     int(args.seed or 0))
    means = result["summary"]
    harrell = means[means["metric"] == "c_harrell"]
    for row in harrell.itertuples():
        print(f"{row.model}: Harrell C {row.mean:.3f} (sd {row.std:.3f}, {row.count} folds)")
    return result


def _split(text) -> list[str]:
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return list(text)
    return [t.strip() for t in str(text).split(",") if t.strip()]

