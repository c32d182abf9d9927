"""Multiple-instance (slice-bag) survival models: aggregators, heads, training, the CV runner.

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
negative Cox partial likelihood (:func:`btpipe.survival.deep.cox_partial_likelihood`, Breslow or
Efron ties); survival functions from the Breslow baseline hazard of the training risks.
``deephit`` = shared sub-network + cause-specific sub-network fed [shared output, F] (the
residual link of DeepHit), softmax over the time bins + one bin beyond the grid; loss =
alpha * likelihood + (1 - alpha) * ranking (sigma) from :class:`btpipe.survival.deep.DeepHit`.

Encoders: :mod:`btpipe.survival.encoders`; each fold's encoder is pre-trained on the fold's
training bags only (recorded in ``fit_info_['pretrain_subjects']``). With ``freeze='all'``
the features are computed once and only the aggregator and head train; otherwise the encoder's
unfrozen part trains end to end with them.
"""

from __future__ import annotations

import time as _time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import ConfigError, InputError
from ..io import torch_save, write_json, write_parquet
from . import encoders as E
from .bags import PLANES, SliceBag, load_bags
from .deep import DeepHit, cox_partial_likelihood, torch_threads

AGGREGATORS = ("mean", "max", "gated", "daal_single", "daal_multiple", "soft")
ATTENTION_COLUMNS = ["subject", "repeat", "fold", "query", "plane", "slice_index", "relative_position",
                     "is_anchor", "weight"]


def _torch():
    import torch

    return torch


def _mlp(n_in, hidden, dropout, n_out):
    torch = _torch()
    layers, width = [], n_in
    for h in hidden or ():
        layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = int(h)
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


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
        self.fc = _mlp(v_dim, hidden, dropout, 1)
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
            self.shared = _mlp(dim, hidden, dropout, 1)
            self.specific = None
        elif head == "deephit":
            layers, width = [], dim
            for h in hidden or ():
                layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
                width = int(h)
            self.shared = torch.nn.Sequential(*layers) if layers else torch.nn.Identity()
            self.specific = _mlp(width + dim, (32,), dropout, n_out)
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


# ---------------------------------------------------------------- Cox / DeepHit helpers


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


def cox_survival_functions(risk, times, cumhaz):
    """sksurv StepFunctions S(t) = exp(-H0(t) exp(risk)), starting at (0, 1)."""
    from sksurv.functions import StepFunction

    surv = np.exp(-np.outer(np.exp(np.asarray(risk, float)), cumhaz))
    x = np.concatenate([[0.0], times])
    return np.array([StepFunction(x, np.concatenate([[1.0], s])) for s in surv])


def deephit_grid(time, event, n_bins=24, grid="quantile"):
    """Time grid: quantiles of the training event times (as deep.DeepHit), or ``monthly``
    steps of 30.44 days (METHODS B: 24 monthly steps to 2 years)."""
    if grid == "monthly":
        return 30.44 * np.arange(1, int(n_bins) + 1)
    if grid != "quantile":
        raise ConfigError(f"deephit grid must be quantile or monthly, got {grid!r}")
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    base = t[e] if e.any() else t
    return np.unique(np.quantile(base, np.linspace(0, 1, int(n_bins))))


def deephit_survival(logits, grid):
    """(survival [n, len(grid)], StepFunctions) from DeepHit logits [n, len(grid) + 1]."""
    from sksurv.functions import StepFunction

    z = logits - logits.max(axis=1, keepdims=True)
    pmf = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    surv = np.clip(1.0 - np.cumsum(pmf, axis=1)[:, : len(grid)], 0.0, 1.0)
    if grid[0] > 0:
        x = np.concatenate([[0.0], grid])
        fns = [StepFunction(x, np.concatenate([[1.0], s])) for s in surv]
    else:
        fns = [StepFunction(grid, s) for s in surv]
    return surv, np.array(fns)


# ---------------------------------------------------------------- the estimator


class BagSurvivalModel:
    """A slice-bag survival model with an sklearn-like contract on lists of :class:`SliceBag`.

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

    PARAMS = ("aggregator", "head", "encoder", "encoder_options", "size", "channels", "pretrain_epochs",
              "pretrain_lr", "pretrain_batch_size", "freeze", "epochs", "lr", "weight_decay",
              "batch_size", "hidden", "dropout", "attention_dim", "value_dim", "daal_hidden",
              "daal_scope", "ties", "n_bins", "grid", "alpha", "sigma", "device", "amp", "n_threads",
              "random_state")

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self.PARAMS}

    @property
    def has_attention(self) -> bool:
        return self.aggregator in ("gated", "soft", "daal_single", "daal_multiple")

    # -- building blocks

    def _threads(self):
        import contextlib

        return torch_threads(self.n_threads) if self.n_threads else contextlib.nullcontext()

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
        return self.deephit_.loss(out, time, event)

    # -- fit

    def fit(self, bags, y):
        with self._threads():
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
            self.deephit_ = _DeepHitLoss(self.grid_, self.alpha, self.sigma)
            n_out = len(self.grid_) + 1
        else:
            n_out = 1
        self._build(bags[0].channels, n_out)
        # pretrain_cache_: a folder shared by the lab's bag models (set by run_subject_model).
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
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        self.loss_history_ = []
        for _ in range(int(self.epochs)):
            self.net_.train()
            if cached is None:
                E.train_mode(self.encoder_, self.freeze)
            total = 0.0
            perm = rng.permutation(len(bags))
            for start in range(0, len(bags), int(self.batch_size)):
                idx = perm[start:start + int(self.batch_size)]
                if not event[idx].any() or len(idx) < 2:
                    continue  # no partial-likelihood signal without an event
                opt.zero_grad()
                batch = [bags[i] for i in idx]
                feats = [cached[i] for i in idx] if cached is not None else self._features(batch, grad=True)
                out, _ = self._outputs(feats, batch)
                loss = self._loss(out, time[idx], event[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach())
            self.loss_history_.append(total)
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
        with self._threads(), torch.no_grad():
            self.net_.eval()
            out, weights = self._outputs(self._features(list(bags)), list(bags))
        out = out.cpu().numpy().astype(float)
        return (out, weights) if with_weights else out

    def predict(self, bags) -> np.ndarray:
        out = self._forward(bags)
        if self.head == "cox":
            return out[:, 0]
        surv, _ = deephit_survival(out, self.grid_)
        widths = np.diff(np.concatenate([[0.0], self.grid_]))
        return -(surv * widths[None, :]).sum(axis=1)  # minus restricted mean survival time

    def predict_survival_function(self, bags, return_array=False):
        out = self._forward(bags)
        if self.head == "cox":
            fns = cox_survival_functions(out[:, 0], self.baseline_times_, self.baseline_cumhaz_)
            return np.array([f.y[1:] for f in fns]) if return_array else fns
        surv, fns = deephit_survival(out, self.grid_)
        return surv if return_array else fns

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
        return {"class": "BagSurvivalModel", "params": _plain(self.get_params()),
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
            model.deephit_ = _DeepHitLoss(model.grid_, model.alpha, model.sigma)
        return model


class _DeepHitLoss:
    """deep.DeepHit's likelihood + ranking loss on a fixed grid (reused, not re-implemented)."""

    def __init__(self, grid, alpha, sigma):
        self.impl = DeepHit(alpha=alpha, sigma=sigma)
        self.impl.grid_ = np.asarray(grid, float)

    def loss(self, out, time, event):
        return self.impl._loss(out, np.asarray(time, float), np.asarray(event, bool))


def _plain(value):
    """Tuples -> lists, numpy scalars -> Python (safe for torch.load(weights_only=True) and JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- the CV runner


def _model_outputs(model, inputs, horizons, grid=None):
    """risk, survival at horizons and on a grid (as lab.predict_outputs does for pipelines)."""
    from . import metrics as M

    out = {"risk": np.asarray(model.predict(inputs), float), "days": None, "surv_h": None,
           "surv_grid": None}
    if len(horizons) or (grid is not None and len(grid)):
        fns = model.predict_survival_function(inputs)
        out["surv_h"] = M.step_values(fns, horizons) if len(horizons) else None
        if grid is not None and len(grid):
            out["surv_grid"] = M.step_values(fns, grid)
    return out


def fit_fold(make_model, inputs, y, train, test, horizons):
    """Fit a fresh model on ``train`` positions; (model, train_out, test_out) as lab.run_fold."""
    from . import metrics as M

    model = make_model().fit([inputs[i] for i in train], y[train])
    y_tr, y_te = y[train], y[test]
    ibs_grid = M.brier_grid(y_tr, y_te)
    test_grid = np.unique(np.concatenate([np.unique(y_te["time"]), ibs_grid]))
    train_out = _model_outputs(model, [inputs[i] for i in train], [], None)
    test_out = _model_outputs(model, [inputs[i] for i in test], horizons, test_grid)
    full = test_out["surv_grid"]
    test_out["surv_grid"] = full[:, np.searchsorted(test_grid, np.unique(y_te["time"]))]
    test_out["surv_ibs"] = full[:, np.searchsorted(test_grid, ibs_grid)]
    test_out["ibs_grid"] = ibs_grid
    return model, train_out, test_out


def run_subject_model(name, inputs: dict, y, ids, folds, out_dir, params, seed=0, input_kind="bags",
                      pretrain_cache=None, holdout_ids=()) -> pd.DataFrame:
    """Cross-validate a registered subject-input model (slice bags or volumes) and fit it on all.

    ``inputs`` {subject: model input}; the rest as :func:`btpipe.survival.lab.run_model`. Writes
    under ``out_dir/name``: predictions.parquet, fold_metrics.parquet, card.json, final.pt and,
    for attention models, attention.parquet (test-fold weights: subject, repeat, fold, query,
    plane, slice_index, relative_position, is_anchor, weight). Returns the predictions.
    ``pretrain_cache``: a folder where slice-bag models share identical encoder pre-trainings
    (:func:`btpipe.survival.encoders.pretrain_encoder_cached`). ``holdout_ids`` (subjects no
    fold trains on) are scored by every fold model as in :func:`btpipe.survival.lab.run_model`
    (holdout_predictions.parquet, holdout_metrics.parquet) and left out of the final model.
    """
    from .lab import _prediction_frame, fold_failed, fold_tables, library_versions, \
        resolve_params, risk_percentiles, score_fold, write_holdout
    from .models import MODELS, build_model, model_options

    params = resolve_params(params)
    spec = MODELS[name]
    ids = np.asarray([str(i) for i in ids])
    position = {s: i for i, s in enumerate(ids)}
    listed = [inputs[s] for s in ids]
    hold = np.asarray([position[str(s)] for s in holdout_ids], dtype=int)
    horizons = [float(h) for h in params["horizons_days"]]

    def make():
        model = build_model(name, params, (), seed)
        if pretrain_cache is not None:
            model.pretrain_cache_ = str(pretrain_cache)
        return model

    pred_frames, metric_rows, fold_errors, fold_info, attention = [], [], [], [], []
    hold_percentiles = []
    for f in folds:
        train = np.asarray([position[s] for s in f["train_ids"]])
        test = np.asarray([position[s] for s in f["test_ids"]])
        try:
            model, train_out, test_out = fit_fold(make, listed, y, train, test, horizons)
            if len(hold):
                hold_risk = model.predict([listed[i] for i in hold])
                hold_percentiles.append(risk_percentiles(hold_risk, train_out["risk"]))
            for metric, horizon, value in score_fold(name, y[train], y[test], train_out, test_out, params):
                metric_rows.append((name, f["repeat"], f["fold"], metric, horizon, value))
            fold_info.append({"repeat": f["repeat"], "fold": f["fold"], **model.fit_info_})
            if hasattr(model, "attention"):
                att = model.attention([listed[i] for i in test])
                if len(att):
                    att.insert(1, "repeat", f["repeat"])
                    att.insert(2, "fold", f["fold"])
                    attention.append(att)
        except _torch().cuda.OutOfMemoryError:
            raise  # a configuration problem, not a fold problem
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError) as exc:
            train_out, test_out = fold_failed(name, f, len(train), len(test), horizons, exc,
                                              fold_errors)
        pred_frames.append(_prediction_frame(name, f, ids[test], y[test], train_out, test_out, horizons))
    predictions, metrics = fold_tables(pred_frames, metric_rows)
    model_dir = Path(out_dir) / name
    if len(hold_percentiles):
        write_holdout(model_dir, name, ids[hold], y[hold], hold_percentiles)
    dev = np.setdiff1d(np.arange(len(ids)), hold)
    final = make().fit([listed[i] for i in dev], y[dev])
    torch_save(model_dir / "final.pt", {"name": name, "input": input_kind, "model": final.bundle(),
                                        "horizons_days": horizons, "btpipe": __version__})
    if getattr(final, "has_attention", False):
        frame = pd.concat(attention, ignore_index=True) if attention else pd.DataFrame(columns=ATTENTION_COLUMNS)
        write_parquet(model_dir / "attention.parquet", frame)
    write_parquet(model_dir / "predictions.parquet", predictions)
    write_parquet(model_dir / "fold_metrics.parquet", metrics)
    write_json(model_dir / "card.json", {
        "model": name, "description": spec.description, "input": input_kind,
        "hyperparameters": _plain(model_options(name, params)), "seed": int(seed),
        "n": int(len(dev)), "n_holdout": int(len(hold)), "n_events": int(np.sum(y[dev]["event"])),
        "folds": int(max(f["fold"] for f in folds) + 1),
        "repeats": int(max(f["repeat"] for f in folds) + 1), "fold_errors": fold_errors,
        "fold_training": _plain(fold_info), "final_training": _plain(final.fit_info_),
        "predicts_days": spec.predicts_days, "survival_function": spec.survival_function,
        "horizons_days": list(params["horizons_days"]),
        "class_cutoffs_months": list(params["class_cutoffs_months"]), "libraries": library_versions()})
    return predictions


def run_bag_model(name, bag_paths: dict, y, ids, folds, out_dir, params, seed=0,
                  pretrain_cache=None, holdout_ids=()) -> pd.DataFrame:
    """Cross-validate a slice-bag model (``models.MODELS[name].input == 'bags'``).

    ``bag_paths`` {subject: path to slices.npz} must cover ``ids``; the bags are read once,
    resized to the model's ``size``. Outputs as :func:`run_subject_model`.
    """
    from .models import MODELS, model_options

    if MODELS.get(name) is None or MODELS[name].input != "bags":
        raise ConfigError(f"{name!r} is not a slice-bag survival model")
    options = model_options(name, params)
    bags = load_bags(bag_paths, ids, size=options["size"], channels=options["channels"])
    return run_subject_model(name, bags, y, ids, folds, out_dir, params, seed, input_kind="bags",
                             pretrain_cache=pretrain_cache, holdout_ids=holdout_ids)


def load_final(path, device="cpu"):
    """The fitted model saved as final.pt by :func:`run_subject_model` (bags or volumes)."""
    torch = _torch()
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    kind = bundle["model"]["class"]
    if kind == "BagSurvivalModel":
        return BagSurvivalModel.from_bundle(bundle["model"], device), bundle
    from .volumes import VolumeSurvivalModel

    return VolumeSurvivalModel.from_bundle(bundle["model"], device), bundle


def predict_new_bags(final_path, bag_paths: dict) -> pd.DataFrame:
    """Score new subjects' bags with a saved final.pt (subject, risk, surv_{h}d)."""
    from .lab import _surv_columns
    from . import metrics as M

    model, bundle = load_final(final_path)
    subjects = list(bag_paths)
    bags = load_bags(bag_paths, subjects, size=model.size, channels=model.channels)
    listed = [bags[s] for s in subjects]
    frame = pd.DataFrame({"subject": subjects, "risk": model.predict(listed)})
    values = M.step_values(model.predict_survival_function(listed), bundle["horizons_days"])
    for col, v in zip(_surv_columns(bundle["horizons_days"]), values.T):
        frame[col] = v
    return frame
