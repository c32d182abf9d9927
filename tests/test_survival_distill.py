"""Knowledge distillation (teacher MLP -> student MLP) regressing survival days."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from btpipe.survival.data import make_y
from btpipe.survival.distill import DistilledRegressor
from btpipe.survival.folds import make_folds
from btpipe.survival.fit import Inputs, run_model
from btpipe.survival.registry import ResolvedModel

FAST = {"epochs": 40, "batch_size": 8, "teacher_hidden": (64, 32, 16), "student_hidden": (4,)}


def _regression(n, seed=0, noise=150.0):
    """Days = 450 + 120 x0 - 90 x1 + 60 x0 x2 + noise, 6 features (3 pure noise)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    days = 450 + 120 * X[:, 0] - 90 * X[:, 1] + 60 * X[:, 0] * X[:, 2] + rng.normal(0, noise, n)
    return X, make_y(np.ones(n, bool), np.maximum(days, 5.0))


def test_student_learns_from_the_teacher():
    X, y = _regression(160, seed=1)
    Xte, yte = _regression(400, seed=2)
    fits = {mode: DistilledRegressor(mode=mode, **FAST, random_state=0).fit(X, y)
            for mode in ("teacher", "student", "distill")}
    pred = {m: f.predict_days(Xte) for m, f in fits.items()}
    mse = {m: float(np.mean((p - yte["time"]) ** 2)) for m, p in pred.items()}
    assert all(np.isfinite(v) for v in mse.values())
    assert mse["teacher"] < np.var(yte["time"])  # the teacher learned something
    teacher = fits["distill"].predict_teacher_days(Xte)
    # soft targets pull the distilled student towards its teacher
    to_teacher = {m: float(np.mean((pred[m] - teacher) ** 2)) for m in ("student", "distill")}
    assert to_teacher["distill"] < to_teacher["student"], to_teacher
    assert np.allclose(fits["distill"].predict(Xte), -pred["distill"])
    # each network kept its best validation epoch (history is per epoch)
    assert len(fits["distill"].history_["student"]) == FAST["epochs"]


def test_distillation_is_seeded_and_skips_censored_rows():
    X, y = _regression(60, seed=3)
    y["event"][:20] = False
    y["time"][:20] = 1.0  # nonsense censored times must not move the fit
    a = DistilledRegressor(**FAST, random_state=4).fit(X, y)
    b = DistilledRegressor(**FAST, random_state=4).fit(X, y)
    assert np.array_equal(a.predict_days(X), b.predict_days(X))
    assert a.mean_ == pytest.approx(float(np.mean(y["time"][20:])))


def test_distilled_models_run_in_the_lab(tmp_path):
    X, y = _regression(40, seed=5)
    ids = np.asarray([f"s{i}" for i in range(40)])
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)], index=pd.Index(ids, name="subject"))
    frame.attrs["covariates"] = []
    folds = make_folds(y, 2, 1, 0, ids)
    params = {"top_n": 0, "n_permutations": 10,
              "model_params": {m: {**FAST, "epochs": 10} for m in ("distill_student", "mlp_student")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in ("distill_student", "mlp_student"):
            pred = run_model(ResolvedModel.from_params(name, params, 0), Inputs(frame), y, ids,
                             folds, tmp_path)
            assert set(pred["subject"]) == set(ids) and np.isfinite(pred["predicted_days"]).all()
            metrics = pd.read_parquet(tmp_path / name / "fold_metrics.parquet")
            assert {"mse", "spearman", "class_accuracy", "c_harrell"} <= set(metrics["metric"])
