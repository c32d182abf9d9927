"""Knowledge distillation of survival days on tabular features (METHODS D).

A deeper *teacher* MLP and a smaller *student* MLP regress survival days. Inside the training
data (the lab's training fold) an 80/20 train/validation split (``val_fraction``) selects each
network's epoch with the lowest validation MSE. ``mode``:

- ``teacher``: the teacher alone;
- ``student``: the student alone on the true days (the comparison in METHODS D);
- ``distill``: the teacher is trained first; the student then learns from the teacher's
  outputs as soft targets: loss = soft_weight * MSE(student, teacher) + (1 - soft_weight) *
  MSE(student, days) (soft_weight 1 = soft targets only).

Days are standardised on the training part for the networks and mapped back. With
``events_only`` (default) censored subjects are left out of the regression (a censored time is
not a survival time; BraTS scores OS on deaths only); when fewer than 4 deaths remain every row
is used. ``predict`` returns a risk (= -days) so the model ranks like the others;
``predict_days`` returns days (class accuracy, MSE and Spearman in the lab).
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import ConfigError
from .training import fit_network, mlp, torch_threads


def _torch():
    import torch

    return torch


def train_regressor(net, x_tr, t_tr, x_val, t_val, epochs, batch_size, lr, weight_decay, seed,
                    soft=None, soft_weight=0.0):
    """Train ``net`` on MSE to ``t_tr`` (and to ``soft`` targets with weight ``soft_weight``);
    keep the epoch with the lowest validation MSE against ``t_val``. Returns (net, history)."""
    torch = _torch()
    gen = torch.Generator().manual_seed(int(seed))
    best = {"val": np.inf, "state": copy.deepcopy(net.state_dict())}
    n, size = len(t_tr), int(batch_size)

    def epoch_batches():
        perm = torch.randperm(n, generator=gen)
        return (perm[start:start + size] for start in range(0, n, size))

    def batch_loss(idx):
        pred = net(x_tr[idx]).squeeze(-1)
        loss = torch.mean((pred - t_tr[idx]) ** 2)
        if soft is not None:
            loss = (1.0 - soft_weight) * loss + soft_weight * torch.mean((pred - soft[idx]) ** 2)
        return loss

    def validate(_):
        net.eval()
        with torch.no_grad():
            val = float(torch.mean((net(x_val).squeeze(-1) - t_val) ** 2))
        if val < best["val"]:
            best.update(val=val, state=copy.deepcopy(net.state_dict()))
        return val

    history = fit_network(net.parameters(), lr, weight_decay, epochs, epoch_batches, batch_loss,
                          start_epoch=net.train, end_epoch=validate)
    net.load_state_dict(best["state"])
    net.eval()
    return net, history


class DistilledRegressor(BaseEstimator):
    """Teacher / student / distilled-student MLP regression of survival days (see module doc)."""

    def __init__(self, mode="distill", teacher_hidden=(128, 64, 32), student_hidden=(16,), dropout=0.1,
                 epochs=100, batch_size=4, lr=1e-3, weight_decay=1e-4, val_fraction=0.2, soft_weight=0.5,
                 events_only=True, n_threads=1, random_state=0):
        self.mode = mode
        self.teacher_hidden = teacher_hidden
        self.student_hidden = student_hidden
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.soft_weight = soft_weight
        self.events_only = events_only
        self.n_threads = n_threads
        self.random_state = random_state

    def fit(self, X, y):
        if self.mode not in ("teacher", "student", "distill"):
            raise ConfigError(f"distillation mode must be teacher, student or distill, got {self.mode!r}")
        with torch_threads(self.n_threads):
            return self._fit(X, y)

    def _split(self, n, rng):
        n_val = int(round(float(self.val_fraction) * n))
        n_val = min(max(n_val, 1), n - 2) if n >= 4 else 0
        perm = rng.permutation(n)
        return perm[n_val:], (perm[:n_val] if n_val else perm[n_val:])

    def _fit(self, X, y):
        torch = _torch()
        seed = int(self.random_state)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        x = np.asarray(X, dtype=np.float32)
        days = np.asarray(y["time"], dtype=float)
        event = np.asarray(y["event"], dtype=bool)
        rows = np.nonzero(event)[0] if self.events_only and event.sum() >= 4 else np.arange(len(days))
        self.n_features_in_ = x.shape[1]
        self.mean_, self.scale_ = float(days[rows].mean()), float(days[rows].std() or 1.0)
        target = ((days[rows] - self.mean_) / self.scale_).astype(np.float32)
        tr, val = self._split(len(rows), rng)
        xt = torch.from_numpy(x[rows])
        tt = torch.from_numpy(target)
        args = (xt[tr], tt[tr], xt[val], tt[val], self.epochs, self.batch_size, self.lr, self.weight_decay)
        self.history_ = {}
        self.teacher_ = None
        if self.mode in ("teacher", "distill"):
            self.teacher_, self.history_["teacher"] = train_regressor(
                mlp(x.shape[1], self.teacher_hidden, self.dropout, 1), *args, seed)
        if self.mode == "teacher":
            self.net_ = self.teacher_
            return self
        soft = None
        if self.mode == "distill":
            with torch.no_grad():
                soft = self.teacher_(xt[tr]).squeeze(-1)
        torch.manual_seed(seed + 1)
        self.net_, self.history_["student"] = train_regressor(
            mlp(x.shape[1], self.student_hidden, self.dropout, 1), *args, seed + 1,
            soft=soft, soft_weight=float(self.soft_weight))
        return self

    def _predict_net(self, net, X):
        torch = _torch()
        with torch_threads(self.n_threads), torch.no_grad():
            z = net(torch.from_numpy(np.asarray(X, dtype=np.float32))).squeeze(-1).numpy()
        return z.astype(float) * self.scale_ + self.mean_

    def predict_days(self, X) -> np.ndarray:
        return self._predict_net(self.net_, X)

    def predict_teacher_days(self, X) -> np.ndarray:
        if self.teacher_ is None:
            raise ValueError("this model has no teacher (mode='student')")
        return self._predict_net(self.teacher_, X)

    def predict(self, X) -> np.ndarray:
        return -self.predict_days(X)
