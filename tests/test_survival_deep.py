"""Deep survival models: DeepSurv against Cox on a simulated cohort, DeepHit sanity."""

from __future__ import annotations

import numpy as np
import pytest
from btpipe.survival import metrics as M
from btpipe.survival.deep import DeepHit, DeepSurv
from btpipe.survival.registry import build_model

from test_survival_reference import simulate_cohort



def _split(X, y, frac=0.7):
    cut = int(frac * len(y))
    return X.iloc[:cut], y[:cut], X.iloc[cut:], y[cut:]


@pytest.mark.slow
def test_deepsurv_matches_cox_on_simulated_cohort():
    X, y = simulate_cohort(n=1500, seed=1)
    Xtr, ytr, Xte, yte = _split(X, y)
    params = {"top_n": 0, "model_params": {"cox": {"alpha": 0.0}, "deepsurv": {"epochs": 150}}}
    cox = build_model("cox", params).fit(Xtr, ytr)
    deep = build_model("deepsurv", params, seed=0).fit(Xtr, ytr)
    c_cox = M.harrell_c(yte["event"], yte["time"], cox.predict(Xte))
    c_deep = M.harrell_c(yte["event"], yte["time"], deep.predict(Xte))
    assert c_cox > 0.7
    assert abs(c_deep - c_cox) < 0.02, (c_deep, c_cox)
    # survival functions: start at 1, never increase
    surv = deep[-1].predict_survival_function(deep[:-1].transform(Xte.iloc[:5]), return_array=True)
    assert (np.diff(surv, axis=1) <= 1e-12).all() and (surv <= 1).all()


def test_deep_models_are_seeded():
    X, y = simulate_cohort(n=300, seed=2)
    a = DeepSurv(epochs=20, random_state=3).fit(X, y).predict(X)
    b = DeepSurv(epochs=20, random_state=3).fit(X, y).predict(X)
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_deephit_learns_the_ranking():
    X, y = simulate_cohort(n=1000, seed=3)
    Xtr, ytr, Xte, yte = _split(X, y)
    model = DeepHit(epochs=100, n_bins=20, random_state=0).fit(Xtr.to_numpy(), ytr)
    assert model.loss_history_[-1] < model.loss_history_[0]
    c = M.harrell_c(yte["event"], yte["time"], model.predict(Xte.to_numpy()))
    assert c > 0.7
    surv = model.predict_survival_function(Xte.to_numpy()[:10], return_array=True)
    assert (np.diff(surv, axis=1) <= 1e-9).all()
