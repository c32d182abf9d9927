"""Challenge-format survival predictions (BraTS overall-survival task).

One CSV per model, two columns as in BraTS ``survival_info.csv``: the subject
id (``BraTS20ID`` for BraTS 2020 names) and ``Survival_days``. Subjects with
an outcome carry their out-of-fold prediction (mean over repeats: no model
that predicted them trained on them); subjects without one carry the final
model's prediction. A model that predicts days uses them; the others give the
median of their predicted survival function.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

BRATS_ID = re.compile(r"^BraTS[-_]?(?P<year>\d{2})?", re.IGNORECASE)


def is_brats_cohort(subjects) -> bool:
    """Every subject id is a BraTS case id (BraTS20_Training_001, BraTS-GLI-00001-000, ...)."""
    subjects = [str(s) for s in subjects]
    return bool(subjects) and all(BRATS_ID.match(s) for s in subjects)


def id_column(subjects) -> str:
    """The id column name BraTS tables use: BraTS20ID for BraTS20_* names, else subject."""
    years = {m.group("year") for m in map(BRATS_ID.match, map(str, subjects)) if m}
    return f"BraTS{years.pop()}ID" if len(years) == 1 and None not in years else "subject"


def submission_table(predictions: pd.DataFrame, new_predictions: pd.DataFrame) -> pd.DataFrame:
    """(id, Survival_days) for every subject of both tables, in subject order."""
    oof = predictions.groupby("subject", sort=False)["predicted_days"].mean()
    new = new_predictions.set_index("subject")["predicted_days"] if len(new_predictions) else \
        pd.Series(dtype=float)
    days = pd.concat([oof, new[~new.index.isin(oof.index)]])
    subjects = sorted(days.index.astype(str))
    values = days.reindex(subjects).to_numpy(float)
    return pd.DataFrame({id_column(subjects): subjects,
                         "Survival_days": np.where(np.isfinite(values), np.round(values), np.nan)})


def write_submission(predictions_path, new_predictions_path, out_path) -> pd.DataFrame:
    from ..io import write_csv

    table = submission_table(pd.read_parquet(predictions_path), pd.read_parquet(new_predictions_path))
    write_csv(out_path, table)
    return table
