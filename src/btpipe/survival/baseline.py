"""Survival functions from a fitted risk: the Breslow baseline hazard (Cox-type models) and
the discrete-time survival of DeepHit-type models, as scikit-survival StepFunctions."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .metrics import DAYS_PER_MONTH


def breslow_baseline(risk, time, event):
    """(event times, cumulative baseline hazard) of the Breslow estimator for log-risks ``risk``."""
    risk = np.asarray(risk, float)
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    shift = risk.max() if risk.size else 0.0
    w = np.exp(risk - shift)
    times = np.unique(time[event])
    at_risk = np.array([w[time >= t].sum() for t in times])
    deaths = np.array([np.sum((time == t) & event) for t in times])
    return times, np.cumsum(deaths / at_risk) * np.exp(-shift)


def cox_survival(risk, times, cumhaz) -> np.ndarray:
    """S(t) = exp(-H0(t) exp(risk)) at the baseline's times, [n, len(times)]."""
    return np.exp(-np.outer(np.exp(np.asarray(risk, float)), cumhaz))


def cox_survival_functions(risk, times, cumhaz):
    """sksurv StepFunctions S(t) = exp(-H0(t) exp(risk)), starting at (0, 1)."""
    from sksurv.functions import StepFunction

    x = np.concatenate([[0.0], times])
    return np.array([StepFunction(x, np.concatenate([[1.0], s]))
                     for s in cox_survival(risk, times, cumhaz)])


def deephit_grid(time, event, n_bins=24, grid="quantile"):
    """Time grid: quantiles of the training event times (all times when there is no event), or
    ``monthly`` steps of 30.44 days (METHODS B: 24 monthly steps to 2 years)."""
    if grid == "monthly":
        return DAYS_PER_MONTH * np.arange(1, int(n_bins) + 1)
    if grid != "quantile":
        raise ConfigError(f"deephit grid must be quantile or monthly, got {grid!r}")
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    base = t[e] if e.any() else t
    return np.unique(np.quantile(base, np.linspace(0, 1, int(n_bins))))


def deephit_survival(pmf, grid) -> np.ndarray:
    """Survival [n, len(grid)] from DeepHit bin probabilities [n, len(grid) + 1]."""
    return np.clip(1.0 - np.cumsum(pmf, axis=1)[:, : len(grid)], 0.0, 1.0)


def deephit_survival_functions(surv, grid):
    """sksurv StepFunctions of DeepHit survival rows, starting at (0, 1) when the grid starts later."""
    from sksurv.functions import StepFunction

    if grid[0] > 0:
        x = np.concatenate([[0.0], grid])
        return np.array([StepFunction(x, np.concatenate([[1.0], s])) for s in surv])
    return np.array([StepFunction(grid, s) for s in surv])


def restricted_mean_risk(surv, grid) -> np.ndarray:
    """Minus the restricted mean survival time over the grid: a risk (higher = shorter)."""
    widths = np.diff(np.concatenate([[0.0], grid]))
    return -(surv * widths[None, :]).sum(axis=1)
