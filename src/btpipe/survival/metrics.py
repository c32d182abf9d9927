"""Survival metrics for one model on one test fold.

Every function returns NaN (with a warning) when the metric cannot be computed
on the fold (no events, no comparable pairs, a horizon outside follow-up), so
a tiny cohort runs through. IPCW-based scores (Uno C, time-dependent AUC,
integrated Brier score) estimate the censoring distribution on the training
part; test subjects followed beyond the last training time are
administratively censored just below it, which leaves every score at times
before that point unchanged.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import spearmanr

from .data import make_y
from .registry import DAYS_PER_MONTH


def _warn(metric, why):
    warnings.warn(f"survival metric {metric} is NaN: {why}", RuntimeWarning, stacklevel=3)
    return float("nan")


def comparable_pairs(event, time):
    """Index arrays (i, j) of Harrell-comparable pairs: i had the event and T_i < T_j,
    or T_i == T_j with j censored (as scikit-survival and lifelines count them)."""
    event = np.asarray(event, dtype=bool)
    time = np.asarray(time, dtype=float)
    later = (time[:, None] < time[None, :]) | ((time[:, None] == time[None, :]) & ~event[None, :])
    i, j = np.nonzero(later & event[:, None])
    return i, j


def univariate_cindex(X, event, time, tied_tol: float = 0.0,
                      max_cells: int = 20_000_000) -> np.ndarray:
    """Harrell's C of every column of X taken as a risk score, vectorised over columns.

    As scikit-survival's concordance_index_censored on each column's non-missing subjects:
    a pair with a missing value is left out for that column, and risks within ``tied_tol``
    count as tied (1/2). NaN for a column with no usable pair.
    """
    X = np.asarray(X, dtype=float)
    i, j = comparable_pairs(event, time)
    out = np.full(X.shape[1], np.nan)
    if i.size == 0:
        return out
    step = max(1, max_cells // i.size)
    for start in range(0, X.shape[1], step):
        block = X[:, start:start + step]
        diff = block[i] - block[j]
        valid = np.isfinite(diff)
        ties = valid & (np.abs(diff) <= tied_tol)
        concordant = valid & ~ties & (diff > 0)
        n_valid = valid.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = (concordant.sum(axis=0) + 0.5 * ties.sum(axis=0)) / n_valid
        out[start:start + step] = np.where(n_valid > 0, c, np.nan)
    return out


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean over folds with a t-based confidence interval: (mean, lo, hi, n), NaNs left out."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1:
        return mean, float("nan"), float("nan"), 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def harrell_c(event, time, risk) -> float:
    """Harrell's C (scikit-survival's concordance_index_censored; ties in risk count 1/2)."""
    from sksurv.metrics import concordance_index_censored

    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=float)
    if not np.isfinite(risk).all():
        return _warn("c_harrell", "non-finite risk")
    if event.sum() == 0:
        return _warn("c_harrell", "no events in the test fold")
    try:
        return float(concordance_index_censored(event, np.asarray(time, float), risk)[0])
    except Exception as exc:  # sksurv raises when no pair is comparable
        return _warn("c_harrell", str(exc))


def ipcw_safe(y_train, y_test):
    """Test outcomes administratively censored below the last training time.

    The censoring distribution is only known up to the last training time;
    scores at earlier times do not change (see module docstring).
    """
    cap = float(np.max(y_train["time"]))
    time = np.asarray(y_test["time"], dtype=float).copy()
    event = np.asarray(y_test["event"], dtype=bool).copy()
    beyond = time >= cap
    time[beyond] = np.nextafter(cap, -np.inf)
    event[beyond] = False
    return make_y(event, time), cap


def uno_c(y_train, y_test, risk, tau=None) -> float:
    """Uno's IPCW C truncated at tau = min(max train time, max test time) by default."""
    from sksurv.metrics import concordance_index_ipcw

    risk = np.asarray(risk, dtype=float)
    if not np.isfinite(risk).all():
        return _warn("c_uno", "non-finite risk")
    if not np.asarray(y_test["event"]).any():
        return _warn("c_uno", "no events in the test fold")
    limit = min(float(np.max(y_train["time"])), float(np.max(y_test["time"])))
    tau = limit if tau is None else min(float(tau), limit)
    try:
        return float(concordance_index_ipcw(y_train, y_test, risk, tau=tau)[0])
    except Exception as exc:
        return _warn("c_uno", str(exc))


def step_values(functions, times) -> np.ndarray:
    """Matrix [n_subjects, n_times] of sksurv StepFunctions evaluated at ``times``.

    Times before the first step give the function's value at its domain start
    (survival 1 for survival functions); times after the last step carry the
    last value forward (the usual convention beyond follow-up).
    """
    times = np.asarray(times, dtype=float)
    out = np.empty((len(functions), len(times)))
    for row, fn in enumerate(functions):
        lo, hi = fn.domain
        out[row] = fn(np.clip(times, lo, hi))
    return out


def median_survival_days(functions) -> np.ndarray:
    """Predicted median survival of each sksurv StepFunction: the first time its survival
    falls to 0.5 or below; where it never does, the last time it covers (the prediction
    is then 'beyond follow-up' and reads as that lower bound)."""
    out = np.empty(len(functions))
    for row, fn in enumerate(functions):
        below = np.flatnonzero(np.asarray(fn.y) <= 0.5)
        out[row] = fn.x[below[0]] if below.size else fn.x[-1]
    return out


def antolini_c(event, time, surv_at_own_times_fn) -> float:
    """Antolini's time-dependent concordance C^td.

    ``surv_at_own_times_fn(t)`` returns every subject's predicted survival at
    time t (vector). A pair (i, j) is comparable when i had the event and
    T_i < T_j, or T_i == T_j with j censored; it is concordant when
    S_i(T_i) < S_j(T_i) (ties in S count 1/2), as in Antolini et al. 2005 and
    pycox.
    """
    event = np.asarray(event, dtype=bool)
    time = np.asarray(time, dtype=float)
    if event.sum() == 0:
        return _warn("c_td", "no events in the test fold")
    concordant, comparable = 0.0, 0
    for i in np.nonzero(event)[0]:
        others = (time > time[i]) | ((time == time[i]) & ~event)
        others[i] = False
        if not others.any():
            continue
        surv = surv_at_own_times_fn(time[i])
        concordant += np.sum(surv[i] < surv[others]) + 0.5 * np.sum(surv[i] == surv[others])
        comparable += int(others.sum())
    if comparable == 0:
        return _warn("c_td", "no comparable pairs")
    return float(concordant / comparable)


def antolini_c_from_matrix(event, time, surv_matrix, grid) -> float:
    """C^td with survival functions given on a time grid (step evaluation)."""
    grid = np.asarray(grid, dtype=float)
    surv_matrix = np.asarray(surv_matrix, dtype=float)

    def at(t):
        col = np.searchsorted(grid, t, side="right") - 1
        return np.ones(len(surv_matrix)) if col < 0 else surv_matrix[:, col]

    return antolini_c(event, time, at)


def valid_horizons(y_train, y_test, horizons):
    """Horizons strictly inside the test follow-up and before the last training time."""
    lo = float(np.min(y_test["time"]))
    hi = min(float(np.max(y_test["time"])), float(np.max(y_train["time"])))
    return [float(h) for h in horizons if lo <= h < hi]


def auc_td(y_train, y_test, risk, horizons) -> dict:
    """Cumulative/dynamic AUC per horizon; NaN for a horizon outside follow-up."""
    from sksurv.metrics import cumulative_dynamic_auc

    out = {float(h): float("nan") for h in horizons}
    risk = np.asarray(risk, dtype=float)
    ok = set(valid_horizons(y_train, y_test, horizons))
    y_safe, _ = ipcw_safe(y_train, y_test)
    for h in out:
        if h not in ok:
            out[h] = _warn("auc_td", f"horizon {h:g} days is outside the follow-up")
            continue
        cases = (y_safe["time"] <= h) & y_safe["event"]
        if not cases.any() or not (y_safe["time"] > h).any() or not np.isfinite(risk).all():
            out[h] = _warn("auc_td", f"no cases or no controls at {h:g} days")
            continue
        try:
            out[h] = float(cumulative_dynamic_auc(y_train, y_safe, risk, [h])[0][0])
        except Exception as exc:
            out[h] = _warn("auc_td", str(exc))
    return out


def brier_grid(y_train, y_test, n_points: int = 20):
    """Time grid for the integrated Brier score: inside test follow-up, before the last train time."""
    t = np.asarray(y_test["time"], dtype=float)
    hi = min(t.max(), float(np.max(y_train["time"])))
    grid = np.unique(np.quantile(t, np.linspace(0.1, 0.9, n_points)))
    return grid[(grid >= t.min()) & (grid < hi)]


def integrated_brier(y_train, y_test, surv_matrix, grid) -> float:
    """Integrated Brier score over ``grid`` (survival matrix [n_test, len(grid)])."""
    from sksurv.metrics import integrated_brier_score

    if len(grid) < 2:
        return _warn("ibs", "fewer than two time points inside the follow-up")
    y_safe, _ = ipcw_safe(y_train, y_test)
    try:
        return float(integrated_brier_score(y_train, y_safe, surv_matrix, grid))
    except Exception as exc:
        return _warn("ibs", str(exc))


def risk_group_tests(event, time, high) -> tuple[float, float]:
    """(hazard ratio high vs low, log-rank p) for a binary risk-group split."""
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test

    event = np.asarray(event, dtype=bool)
    time = np.asarray(time, dtype=float)
    high = np.asarray(high, dtype=bool)
    if high.all() or (~high).all():
        return _warn("hr", "one risk group is empty"), float("nan")
    if event.sum() == 0:
        return _warn("hr", "no events in the test fold"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = float(logrank_test(time[high], time[~high], event[high], event[~high]).p_value)
        except Exception as exc:
            p = _warn("logrank_p", str(exc))
        try:
            frame = pd.DataFrame({"time": time, "event": event.astype(int), "high": high.astype(float)})
            fitter = CoxPHFitter().fit(frame, "time", "event")
            hr = float(np.exp(fitter.params_["high"]))
        except Exception as exc:
            hr = float("nan")
            warnings.warn(f"survival metric hr is NaN: {exc}", RuntimeWarning)
    if not np.isfinite(hr) or hr > 1e6 or hr < 1e-6:
        hr = float("nan")  # complete separation: the estimate diverged
    return hr, p


def days_to_class(days, cutoffs_months=(10, 15)) -> np.ndarray:
    """Survival class 0..len(cutoffs) (short, mid, long) from days; months are 30.44 days."""
    edges = np.asarray(cutoffs_months, dtype=float) * DAYS_PER_MONTH
    return np.digitize(np.asarray(days, dtype=float), edges, right=False)


def risk_class_thresholds(train_risk, train_y, cutoffs_months=(10, 15)) -> np.ndarray:
    """Risk cut points that give the training fold's observed class proportions.

    High risk = short survival: the cut points are the training-risk quantiles
    at the cumulative class shares of the uncensored training subjects, from
    the long class down. Falls back to tertiles when no training death is seen.
    """
    dead = np.asarray(train_y["event"], dtype=bool)
    classes = days_to_class(np.asarray(train_y["time"])[dead], cutoffs_months)
    n_classes = len(cutoffs_months) + 1
    if classes.size:
        share = np.bincount(classes, minlength=n_classes) / classes.size
    else:
        share = np.full(n_classes, 1.0 / n_classes)
    cumulative_long_first = np.cumsum(share[::-1])[:-1]
    return np.quantile(np.asarray(train_risk, dtype=float), cumulative_long_first)


def risk_to_class(risk, thresholds, n_classes) -> np.ndarray:
    """Class index (0 = short) from risk: above the highest threshold is short."""
    long_first = np.searchsorted(np.asarray(thresholds), np.asarray(risk, dtype=float), side="right")
    return (n_classes - 1) - long_first


def class_accuracy(true_days, event, predicted_class, cutoffs_months=(10, 15)) -> float:
    """Accuracy of survival classes on uncensored subjects (as the BraTS OS task scores)."""
    event = np.asarray(event, dtype=bool)
    if event.sum() == 0:
        return _warn("class_accuracy", "no uncensored test subject")
    truth = days_to_class(np.asarray(true_days)[event], cutoffs_months)
    return float(np.mean(truth == np.asarray(predicted_class)[event]))


def days_errors(true_days, event, predicted_days) -> tuple[float, float]:
    """(MSE, Spearman rho) of predicted days on uncensored subjects (BraTS OS)."""
    event = np.asarray(event, dtype=bool)
    t = np.asarray(true_days, dtype=float)[event]
    p = np.asarray(predicted_days, dtype=float)[event]
    if t.size == 0 or not np.isfinite(p).all():
        return _warn("mse", "no uncensored test subject"), float("nan")
    mse = float(np.mean((t - p) ** 2))
    if t.size < 3 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return mse, _warn("spearman", "fewer than 3 subjects or a constant prediction")
    return mse, float(spearmanr(t, p).statistic)
