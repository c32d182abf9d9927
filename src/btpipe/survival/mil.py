"""Multiple-instance (slice-bag) survival models: aggregators, heads and the estimator.

Aggregators over the slice features h_s of one bag (n slices):

- ``mean`` / ``max``: pooled features -> Cox head.
- ``gated``: gated attention MIL (Ilse et al. 2018):
  a_s = softmax_s( w^T (tanh(V h_s) * sigmoid(U h_s)) ), z = sum_s a_s h_s -> Cox head.
- ``daal_single`` / ``daal_multiple`` (METHODS A): q_s = W_q h_s, v_s = W_v h_s; for each plane p
  U_p(s) = softmax_s <q_s, q_anchor_p> (over every slice of the bag; ``daal_scope='plane'``
  restricts it to the plane's own slices); b_p = sum_s U_p(s) v_s; shared fully connected
  layers map b_p to r_p. single: risk = r_sagittal; multiple: risk = max_p r_p.
- ``soft``: soft attention (METHODS B): a_s = softmax_s(w^T h_s + b), F = sum_s a_s h_s -> DeepHit head.

Heads: ``cox`` = fully connected layers (``hidden``; none = a linear risk) trained with the
negative Cox partial likelihood (:func:`btpipe.survival.losses.cox_partial_likelihood`, Breslow
or Efron ties); survival functions from the Breslow baseline hazard of the training risks.
``deephit`` = shared sub-network + cause-specific sub-network fed [shared output, F] (the
residual link of DeepHit), softmax over the time bins + one bin beyond the grid; loss =
alpha * likelihood + (1 - alpha) * ranking (sigma), :func:`btpipe.survival.losses.deephit_loss`.

Encoders: :mod:`btpipe.survival.encoders`; each fold's encoder is pre-trained on the fold's
training bags only (recorded in ``fit_info_['pretrain_subjects']``). With ``freeze='all'``
the features are computed once and only the aggregator and head train; otherwise the encoder's
unfrozen part trains end to end with them.
"""

from __future__ import annotations

import time as _time

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from ..errors import ConfigError, InputError
from ..io import plain_values
from . import encoders as E
from .bags import PLANES, SliceBag
from .baseline import (breslow_baseline, cox_survival_functions, deephit_grid, deephit_survival,
                       deephit_survival_functions, restricted_mean_risk)
from .deep import softmax
from .losses import cox_partial_likelihood, deephit_loss
from .training import fit_network, hidden_layers, mlp, shuffled_batches, torch_threads

AGGREGATORS = ("mean", "max", "gated", "daal_single", "daal_multiple", "soft")


def _torch():
    import torch

    return torch


# ---------------------------------------------------------------- aggregators


class PoolAggregator(_torch().nn.Module):
    """Mean or max over slices: z = pool_s h_s (no weights)."""

    def __init__(self, mode="mean"):
        super().__init__()
        self.mode = mode

    def forward(self, h, bag_meta=None):
        z = h.mean(dim=0) if self.mode == "mean" else h.max(dim=0).values
        return z, None


class GatedAttention(_torch().nn.Module):
    """Ilse et al. 2018 gated attention: weights [n] sum to 1, z = sum a_s h_s."""

    def __init__(self, dim, attention_dim=64):
        super().__init__()
        torch = _torch()
        self.V = torch.nn.Linear(dim, attention_dim)
        self.U = torch.nn.Linear(dim, attention_dim)
        self.w = torch.nn.Linear(attention_dim, 1)

    def weights(self, h):
        torch = _torch()
        score = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        return torch.softmax(score, dim=0)

    def forward(self, h, bag_meta=None):
        a = self.weights(h)
        return a @ h, a[None, :]


class SoftAttention(_torch().nn.Module):
    """METHODS B soft attention: a_s = softmax_s(w^T h_s + b), F = sum a_s h_s."""

    def __init__(self, dim):
        super().__init__()
        self.score = _torch().nn.Linear(dim, 1)

    def weights(self, h):
        return _torch().softmax(self.score(h).squeeze(-1), dim=0)

    def forward(self, h, bag_meta=None):
        a = self.weights(h)
        return a @ h, a[None, :]


class DAAL(_torch().nn.Module):
    """Deep anchor attention (METHODS A). forward(h, meta) -> (risk scalar, U [P, n], r [P]).

    ``planes``: (0,) for DAAL-single (sagittal anchor), (0, 1, 2) for DAAL-multiple (risk =
    max over the planes present in the bag). ``meta`` = {"anchors": [3] rows, "plane": [n]}.
    """

    def __init__(self, dim, q_dim=64, v_dim=64, hidden=(32,), dropout=0.1, planes=(0, 1, 2), scope="bag"):
        super().__init__()
        torch = _torch()
        if scope not in ("bag", "plane"):
            raise ConfigError(f"daal_scope must be 'bag' or 'plane', got {scope!r}")
        self.W_q = torch.nn.Linear(dim, q_dim, bias=False)
        self.W_v = torch.nn.Linear(dim, v_dim, bias=False)
        self.fc = mlp(v_dim, hidden, dropout, 1)
        self.planes = tuple(planes)
        self.scope = scope

    def attention(self, h, meta):
        """(U [P, n] softmax weights of each anchor's query, planes used)."""
        torch = _torch()
        anchors = np.asarray(meta["anchors"])
        used = [p for p in self.planes if anchors[p] >= 0]
        if not used:
            raise InputError("DAAL: the bag has no slice in the plane(s) the model needs")
        q = self.W_q(h)
        scores = q[torch.as_tensor(anchors[used])] @ q.T  # <q_anchor_p, q_s>, [P, n]
        if self.scope == "plane":
            plane = torch.as_tensor(np.asarray(meta["plane"]), device=h.device)
            own = plane[None, :] == torch.as_tensor(used, device=h.device)[:, None]
            scores = scores.masked_fill(~own, float("-inf"))
        return torch.softmax(scores, dim=1), used

    def forward(self, h, meta):
        U, used = self.attention(h, meta)
        b = U @ self.W_v(h)                  # b_p = sum_s U_p(s) v_s, [P, L]
        r = self.fc(b).squeeze(-1)           # r_p, [P]
        return r.max(), U, r


class BagNet(_torch().nn.Module):
    """Aggregator + head for one bag: forward(h [n, d], meta) -> (output [n_out], weights or None)."""

    def __init__(self, aggregator, dim, head="cox", n_out=1, hidden=(), dropout=0.1, attention_dim=64,
                 value_dim=64, daal_hidden=(32,), daal_scope="bag"):
        super().__init__()
        torch = _torch()
        self.kind = aggregator
        if aggregator in ("mean", "max"):
            self.agg = PoolAggregator(aggregator)
        elif aggregator == "gated":
            self.agg = GatedAttention(dim, attention_dim)
        elif aggregator == "soft":
            self.agg = SoftAttention(dim)
        elif aggregator in ("daal_single", "daal_multiple"):
            planes = (0,) if aggregator == "daal_single" else (0, 1, 2)
            self.agg = DAAL(dim, attention_dim, value_dim, daal_hidden, dropout, planes, daal_scope)
        else:
            raise ConfigError(f"unknown bag aggregator {aggregator!r}; known: {list(AGGREGATORS)}")
        self.head_kind = head
        if aggregator.startswith("daal"):
            if head != "cox":
                raise ConfigError("DAAL models use the Cox head")
            self.shared = self.specific = None
        elif head == "cox":
            self.shared = mlp(dim, hidden, dropout, 1)
            self.specific = None
        elif head == "deephit":
            layers, width = hidden_layers(dim, hidden, dropout)
            self.shared = torch.nn.Sequential(*layers) if layers else torch.nn.Identity()
            self.specific = mlp(width + dim, (32,), dropout, n_out)
        else:
            raise ConfigError(f"unknown bag head {head!r} (cox or deephit)")

    def forward(self, h, meta=None):
        torch = _torch()
        if self.kind.startswith("daal"):
            risk, U, _ = self.agg(h, meta)
            return risk.reshape(1), U
        z, weights = self.agg(h, meta)
        if self.head_kind == "cox":
            return self.shared(z).reshape(1), weights
        shared = self.shared(z)
        return self.specific(torch.cat([shared, z])), weights  # residual link from the input


# ---------------------------------------------------------------- the estimator


class BagSurvivalModel(BaseEstimator):
    """A slice-bag survival model with the sklearn estimator contract on lists of :class:`SliceBag`.

    fit(bags, y) / predict(bags) -> risk (higher = shorter survival) /
    predict_survival_function(bags) -> sksurv StepFunctions / attention(bags) -> DataFrame.
    ``fit_info_`` records the pre-training subjects, losses and timings.
    """

    def __init__(self, aggregator="mean", head="cox", encoder="resnet18", encoder_options=None, size=64,
                 channels=None, pretrain_epochs=2, pretrain_lr=1e-3, pretrain_batch_size=32,
                 freeze="all", epochs=40, lr=1e-3, weight_decay=1e-2, batch_size=32, hidden=(),
                 dropout=0.1, attention_dim=64, value_dim=64, daal_hidden=(32,), daal_scope="bag",
                 ties="breslow", n_bins=24, grid="quantile", alpha=0.5, sigma=0.1, device="auto",
                 amp=True, n_threads=None, random_state=0):
        self.aggregator = aggregator
        self.head = head
        self.encoder = encoder
        self.encoder_options = encoder_options
        self.size = size
        self.channels = channels
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.pretrain_batch_size = pretrain_batch_size
        self.freeze = freeze
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.hidden = hidden
        self.dropout = dropout
        self.attention_dim = attention_dim
        self.value_dim = value_dim
        self.daal_hidden = daal_hidden
        self.daal_scope = daal_scope
        self.ties = ties
        self.n_bins = n_bins
        self.grid = grid
        self.alpha = alpha
        self.sigma = sigma
        self.device = device
        self.amp = amp
        self.n_threads = n_threads
        self.random_state = random_state

    @property
    def has_attention(self) -> bool:
        return self.aggregator in ("gated", "soft", "daal_single", "daal_multiple")

    # -- building blocks

    def _build(self, in_channels, n_out):
        self.device_ = E.resolve_device(self.device)
        self.in_channels_ = int(in_channels)
        self.n_out_ = int(n_out)
        self.encoder_ = E.build_encoder(self.encoder, self.in_channels_, int(self.size),
                                        **dict(self.encoder_options or {}))
        self.net_ = BagNet(self.aggregator, self.encoder_.out_dim, self.head, self.n_out_, tuple(self.hidden),
                           self.dropout, self.attention_dim, self.value_dim, tuple(self.daal_hidden),
                           self.daal_scope)

    @staticmethod
    def _meta(bag: SliceBag):
        return {"anchors": bag.anchor_positions(), "plane": bag.plane}

    def _features(self, bags, grad=False):
        """Standardised features per bag (list of tensors on the device)."""
        torch = _torch()
        if not grad:
            feats = [torch.from_numpy(self._raw_features(b)) for b in bags]
            return [((f - self.mu_) / self.sd_).to(self.device_) for f in feats]
        sizes = [b.n for b in bags]
        x = torch.from_numpy(np.concatenate([b.images for b in bags])).to(self.device_)
        with E.autocast(self.device_, self.amp):
            h = self.encoder_(x).float()
        h = (h - self.mu_.to(self.device_)) / self.sd_.to(self.device_)
        return list(torch.split(h, sizes))

    def _raw_features(self, bag):
        """Encoder features of a bag, cached while the encoder does not change (the cache holds
        the image array too, so its id cannot be reused by another array)."""
        cache = self.__dict__.setdefault("_cache", {})
        key = id(bag.images)
        if key not in cache:
            cache[key] = (bag.images, E.encode_images(self.encoder_, bag.images, self.device_, self.amp))
        return cache[key][1]

    def _outputs(self, feats, bags):
        torch = _torch()
        outs, weights = [], []
        for h, bag in zip(feats, bags):
            out, w = self.net_(h, self._meta(bag))
            outs.append(out)
            weights.append(w)
        return torch.stack(outs).float(), weights

    def _loss(self, out, time, event):
        out = out.cpu()  # the loss builds CPU index tensors
        if self.head == "cox":
            return cox_partial_likelihood(out.reshape(-1), time, event, ties=self.ties)
        return deephit_loss(out, time, event, self.grid_, self.alpha, self.sigma)

    # -- fit

    def fit(self, bags, y):
        with torch_threads(self.n_threads):
            return self._fit(list(bags), y)

    def _fit(self, bags, y):
        torch = _torch()
        started = _time.time()
        seed = int(self.random_state)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        time = np.asarray(y["time"], float)
        event = np.asarray(y["event"], bool)
        if len(bags) != len(time):
            raise ValueError(f"{len(bags)} bags for {len(time)} outcomes")
        if self.head == "deephit":
            self.grid_ = deephit_grid(time, event, self.n_bins, self.grid)
            n_out = len(self.grid_) + 1
        else:
            n_out = 1
        self._build(bags[0].channels, n_out)
        # pretrain_cache_: a folder shared by the run's bag models (set by ResolvedModel.build).
        pre = E.pretrain_encoder_cached(self.encoder_, bags, getattr(self, "pretrain_cache_", None),
                                        self.pretrain_epochs, self.pretrain_lr,
                                        self.pretrain_batch_size, self.device_, self.amp, seed)
        pretrain_s = _time.time() - started
        self._cache = {}
        # Slice-feature standardisation from the training slices (frozen state after pre-training).
        raw = np.concatenate([self._raw_features(b) for b in bags])
        sd = raw.std(axis=0)
        self.mu_ = torch.from_numpy(raw.mean(axis=0))
        self.sd_ = torch.from_numpy(np.where(sd > 1e-6, sd, 1.0).astype(np.float32))
        n_trainable = E.set_trainable(self.encoder_, self.freeze)
        cached = self._features(bags) if self.freeze == "all" else None
        self.net_.to(self.device_)
        params = list(self.net_.parameters()) + [p for p in self.encoder_.parameters() if p.requires_grad]

        def start_epoch():
            self.net_.train()
            if cached is None:
                E.train_mode(self.encoder_, self.freeze)

        def batch_loss(idx):
            if not event[idx].any() or len(idx) < 2:
                return None  # no partial-likelihood signal without an event
            batch = [bags[i] for i in idx]
            feats = [cached[i] for i in idx] if cached is not None else self._features(batch, grad=True)
            out, _ = self._outputs(feats, batch)
            return self._loss(out, time[idx], event[idx])

        self.loss_history_ = fit_network(params, self.lr, self.weight_decay, self.epochs,
                                         lambda: shuffled_batches(len(bags), self.batch_size, rng),
                                         batch_loss, start_epoch=start_epoch)
        self.net_.eval()
        self.encoder_.eval()
        if self.freeze != "all":
            self._cache = {}  # the encoder trained: features computed before are stale
        train_out = self._forward(bags)
        if self.head == "cox":
            self.baseline_times_, self.baseline_cumhaz_ = breslow_baseline(train_out[:, 0], time, event)
        self.fit_info_ = {"pretrain_subjects": pre["subjects"], "pretrain_loss": pre["loss"],
                          "pretrain_plane_accuracy": pre["plane_accuracy"], "pretrain_seconds": pretrain_s,
                          "pretrain_cached": pre["cached"],
                          "train_seconds": _time.time() - started - pretrain_s,
                          "encoder_parameters": int(sum(p.numel() for p in self.encoder_.parameters())),
                          "encoder_trainable_parameters": int(n_trainable),
                          "head_parameters": int(sum(p.numel() for p in self.net_.parameters())),
                          "loss_first_last": [self.loss_history_[0], self.loss_history_[-1]]
                          if self.loss_history_ else [], "device": str(self.device_)}
        return self

    # -- predict

    def _forward(self, bags, with_weights=False):
        torch = _torch()
        with torch_threads(self.n_threads), torch.no_grad():
            self.net_.eval()
            out, weights = self._outputs(self._features(list(bags)), list(bags))
        out = out.cpu().numpy().astype(float)
        return (out, weights) if with_weights else out

    def predict(self, bags) -> np.ndarray:
        out = self._forward(bags)
        if self.head == "cox":
            return out[:, 0]
        return restricted_mean_risk(deephit_survival(softmax(out), self.grid_), self.grid_)

    def predict_survival_function(self, bags, return_array=False):
        out = self._forward(bags)
        if self.head == "cox":
            fns = cox_survival_functions(out[:, 0], self.baseline_times_, self.baseline_cumhaz_)
            return np.array([f.y[1:] for f in fns]) if return_array else fns
        surv = deephit_survival(softmax(out), self.grid_)
        return surv if return_array else deephit_survival_functions(surv, self.grid_)

    def attention(self, bags) -> pd.DataFrame:
        """Long table of attention weights: subject, query (anchor plane for DAAL, 'bag'
        otherwise), plane, slice_index, relative_position, is_anchor, weight. Empty for pooling."""
        _, weights = self._forward(bags, with_weights=True)
        rows = []
        for bag, w in zip(bags, weights):
            if w is None:
                continue
            w = w.detach().cpu().numpy()
            if self.aggregator.startswith("daal"):
                used = [p for p in self.net_.agg.planes if bag.anchor_positions()[p] >= 0]
                queries = [PLANES[p] for p in used]
            else:
                queries = ["bag"]
            rel = bag.relative_position()
            for q, row in zip(queries, w):
                rows.append(pd.DataFrame({
                    "subject": bag.subject, "query": q, "plane": [PLANES[p] for p in bag.plane],
                    "slice_index": bag.slice_index, "relative_position": rel, "is_anchor": bag.is_anchor,
                    "weight": row.astype(float)}))
        columns = ["subject", "query", "plane", "slice_index", "relative_position", "is_anchor", "weight"]
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)

    # -- save / load

    def bundle(self) -> dict:
        """Everything needed to rebuild the fitted model (tensors, numbers, strings only)."""
        torch = _torch()
        extra = {}
        if self.head == "cox":
            extra = {"baseline_times": torch.as_tensor(self.baseline_times_),
                     "baseline_cumhaz": torch.as_tensor(self.baseline_cumhaz_)}
        else:
            extra = {"grid": torch.as_tensor(self.grid_)}
        return {"class": "BagSurvivalModel", "params": plain_values(self.get_params()),
                "in_channels": self.in_channels_, "n_out": self.n_out_,
                "encoder_state": {k: v.cpu() for k, v in self.encoder_.state_dict().items()},
                "net_state": {k: v.cpu() for k, v in self.net_.state_dict().items()},
                "mu": self.mu_.cpu(), "sd": self.sd_.cpu(), **extra}

    @classmethod
    def from_bundle(cls, bundle, device="cpu"):
        model = cls(**{**bundle["params"], "device": device})
        model._build(bundle["in_channels"], bundle["n_out"])
        model.encoder_.load_state_dict(bundle["encoder_state"])
        model.net_.load_state_dict(bundle["net_state"])
        model.encoder_.to(model.device_).eval()
        model.net_.to(model.device_).eval()
        model.mu_, model.sd_ = bundle["mu"], bundle["sd"]
        if model.head == "cox":
            model.baseline_times_ = bundle["baseline_times"].numpy()
            model.baseline_cumhaz_ = bundle["baseline_cumhaz"].numpy()
        else:
            model.grid_ = bundle["grid"].numpy()
        return model
