"""Deep survival models in PyTorch (CPU, seeded) with the sklearn estimator contract.

- ``DeepSurv``: an MLP risk score trained on the negative Cox partial
  likelihood (:mod:`btpipe.survival.losses`); survival functions from the
  Breslow baseline hazard on the training data.
- ``DeepHit``: single-risk DeepHit on a discrete time grid (quantiles of the
  training event times): likelihood of the observed bin (event) or of
  surviving past the censoring bin, plus the ranking loss
  exp(-(F_i(s_i) - F_j(s_i)) / sigma) over comparable pairs, sigma = 0.1.

Both accept X as array or DataFrame and y as the sksurv structured array.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from .baseline import (breslow_baseline, cox_survival, cox_survival_functions, deephit_grid,
                       deephit_survival, deephit_survival_functions, restricted_mean_risk)
from .losses import cox_partial_likelihood, deephit_loss
from .training import fit_network, minibatches, mlp, torch_threads


def _torch():
    import torch

    return torch


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of a numpy array (stable)."""
    z = np.asarray(logits, float)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _as_array(X):
    return np.asarray(X, dtype=np.float32)


class _TorchSurvival(BaseEstimator):
    """Shared set-up of the MLP survival models: subclasses define the output size and the loss."""

    def _n_out(self):
        raise NotImplementedError

    def _loss(self, out, time, event):
        raise NotImplementedError

    def _prepare(self, y):
        """Hook to set up targets (e.g. the DeepHit grid) before training."""

    def fit(self, X, y):
        with torch_threads(self.n_threads):
            return self._fit(X, y)

    def _fit(self, X, y):
        torch = _torch()
        torch.manual_seed(int(self.random_state))
        rng = np.random.default_rng(int(self.random_state))
        x = torch.as_tensor(_as_array(X))
        time = np.asarray(y["time"], dtype=float)
        event = np.asarray(y["event"], dtype=bool)
        self.n_features_in_ = x.shape[1]
        self._prepare(y)
        self.net_ = mlp(x.shape[1], self.hidden, self.dropout, self._n_out())

        def batch_loss(idx):
            if not event[idx].any():
                return None  # a batch without events carries no partial-likelihood signal
            return self._loss(self.net_(x[idx]), time[idx], event[idx])

        self.loss_history_ = fit_network(
            self.net_.parameters(), self.lr, self.weight_decay, self.epochs,
            lambda: minibatches(len(time), self.batch_size, rng), batch_loss,
            start_epoch=self.net_.train)
        self.net_.eval()
        self._after_fit(x, time, event)
        return self

    def _after_fit(self, x, time, event):
        """Hook for baseline estimates after training."""

    def _forward(self, X):
        torch = _torch()
        with torch_threads(self.n_threads), torch.no_grad():
            return self.net_(torch.as_tensor(_as_array(X))).numpy().astype(float)


class DeepSurv(_TorchSurvival):
    """DeepSurv: MLP log-hazard ratio trained on the Cox partial likelihood."""

    def __init__(self, hidden=(32, 32), dropout=0.1, epochs=200, lr=1e-3, weight_decay=1e-4,
                 batch_size=256, ties="breslow", random_state=0, n_threads=1):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.ties = ties
        self.random_state = random_state
        self.n_threads = n_threads

    def _n_out(self):
        return 1

    def _loss(self, out, time, event):
        return cox_partial_likelihood(out, time, event, ties=self.ties)

    def _after_fit(self, x, time, event):
        """Breslow baseline cumulative hazard on the training data."""
        eta = self._forward(x.numpy()).reshape(-1)
        self.baseline_times_, self.baseline_cumhaz_ = breslow_baseline(eta, time, event)

    def predict(self, X):
        return self._forward(X).reshape(-1)

    def predict_survival_function(self, X, return_array=False):
        if return_array:
            return cox_survival(self.predict(X), self.baseline_times_, self.baseline_cumhaz_)
        return cox_survival_functions(self.predict(X), self.baseline_times_, self.baseline_cumhaz_)


class DeepHit(_TorchSurvival):
    """Single-risk DeepHit on a grid of ``n_bins`` training event-time quantiles.

    Loss = alpha * likelihood + (1 - alpha) * ranking (sigma). Risk score:
    minus the restricted mean survival time over the grid.
    """

    def __init__(self, hidden=(32, 32), dropout=0.1, epochs=200, lr=1e-3, weight_decay=1e-4,
                 batch_size=256, n_bins=30, alpha=0.5, sigma=0.1, random_state=0, n_threads=1):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.n_bins = n_bins
        self.alpha = alpha
        self.sigma = sigma
        self.random_state = random_state
        self.n_threads = n_threads

    def _prepare(self, y):
        self.grid_ = deephit_grid(y["time"], y["event"], self.n_bins)

    def _n_out(self):
        return len(self.grid_) + 1  # last bin: beyond the grid

    def _loss(self, out, time, event):
        return deephit_loss(out, time, event, self.grid_, self.alpha, self.sigma)

    def predict_pmf(self, X):
        return softmax(self._forward(X))

    def predict_survival_function(self, X, return_array=False):
        surv = deephit_survival(self.predict_pmf(X), self.grid_)
        return surv if return_array else deephit_survival_functions(surv, self.grid_)

    def predict(self, X):
        return restricted_mean_risk(self.predict_survival_function(X, return_array=True), self.grid_)
