"""The survival model registry: each model is a fresh sklearn Pipeline per fold.

Pipeline (fitted inside the training fold only): median imputation ->
standardisation -> univariate C-index feature ranking (top n, always keeping
the clinical covariates) -> estimator. ``age_cox`` and ``age_median`` select
the age column first. Every estimator predicts a risk score (higher = shorter
survival); ``age_median`` also predicts days (risk = -days).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import ConfigError
from .metrics import comparable_pairs

# ---------------------------------------------------------------- transformers


def univariate_cindex(X: np.ndarray, event, time, max_cells: int = 20_000_000) -> np.ndarray:
    """Harrell C of every column of X taken as a risk score (vectorised, chunked)."""
    X = np.asarray(X, dtype=float)
    i, j = comparable_pairs(event, time)
    if i.size == 0:
        return np.full(X.shape[1], 0.5)
    out = np.empty(X.shape[1])
    step = max(1, max_cells // i.size)
    for start in range(0, X.shape[1], step):
        block = X[:, start:start + step]
        diff = block[i] - block[j]
        out[start:start + step] = (np.sum(diff > 0, axis=0) + 0.5 * np.sum(diff == 0, axis=0)) / i.size
    return out


class UnivariateCIndexSelector(TransformerMixin, BaseEstimator):
    """Keep the ``top_n`` columns with the largest |C - 0.5| on the training fold.

    ``keep`` names columns (clinical covariates) that are always kept on top of
    the ranked ones. ``top_n`` None or <= 0 keeps every column. Fitted
    attributes: ``cindex_`` (Series of univariate C per column) and
    ``selected_features_``.
    """

    def __init__(self, top_n=20, keep=()):
        self.top_n = top_n
        self.keep = keep

    def fit(self, X, y):
        frame = _as_frame(X)
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        c = univariate_cindex(frame.to_numpy(), y["event"], y["time"])
        self.cindex_ = pd.Series(c, index=frame.columns)
        keep = [col for col in frame.columns if col in set(self.keep or ())]
        candidates = [col for col in frame.columns if col not in keep]
        if self.top_n is None or int(self.top_n) <= 0 or int(self.top_n) >= len(candidates):
            ranked = candidates
        else:
            strength = (self.cindex_[candidates] - 0.5).abs()
            ranked = list(strength.sort_values(ascending=False, kind="stable").index[: int(self.top_n)])
        self.selected_features_ = keep + [c for c in candidates if c in set(ranked)]
        return self

    def transform(self, X):
        return _as_frame(X, self.feature_names_in_)[self.selected_features_]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.selected_features_, dtype=object)


class ColumnSelector(TransformerMixin, BaseEstimator):
    """Keep named columns (matched case-insensitively); a missing one is a ConfigError."""

    def __init__(self, columns=("age",)):
        self.columns = columns

    def fit(self, X, y=None):
        frame = _as_frame(X)
        lower = {str(c).lower(): c for c in frame.columns}
        missing = [c for c in self.columns if str(c).lower() not in lower]
        if missing:
            raise ConfigError(f"survival model needs column(s) {missing}; table has {list(frame.columns)[:10]}")
        self.selected_features_ = [lower[str(c).lower()] for c in self.columns]
        return self

    def transform(self, X):
        return _as_frame(X)[self.selected_features_]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.selected_features_, dtype=object)


class SafePCA(TransformerMixin, BaseEstimator):
    """PCA whose component count is cut to what the training fold allows."""

    def __init__(self, n_components=5, random_state=0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None):
        arr = np.asarray(X, dtype=float)
        k = max(1, min(int(self.n_components), arr.shape[1], max(1, arr.shape[0] - 1)))
        self.pca_ = PCA(n_components=k, random_state=self.random_state).fit(arr)
        return self

    def transform(self, X):
        z = self.pca_.transform(np.asarray(X, dtype=float))
        return pd.DataFrame(z, columns=[f"pc{i + 1}" for i in range(z.shape[1])],
                            index=getattr(X, "index", None))

    def get_feature_names_out(self, input_features=None):
        return np.asarray([f"pc{i + 1}" for i in range(self.pca_.n_components_)], dtype=object)


def _as_frame(X, columns=None) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    cols = columns if columns is not None else [f"x{i}" for i in range(np.shape(X)[1])]
    return pd.DataFrame(np.asarray(X), columns=list(cols))


# ---------------------------------------------------------------- estimators


class CoxnetFixed(BaseEstimator):
    """Elastic-net Cox (sksurv Coxnet) used at one penalty ``alpha``.

    The regularisation path is fitted (warm starts keep it stable) and the path
    value closest to ``alpha`` on the log scale is used for risks and survival
    functions (``alpha_used_``).
    """

    def __init__(self, alpha=0.05, l1_ratio=0.5, n_alphas=50, alpha_min_ratio=0.01, max_iter=100000):
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.n_alphas = n_alphas
        self.alpha_min_ratio = alpha_min_ratio
        self.max_iter = max_iter

    def fit(self, X, y):
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        self.model_ = CoxnetSurvivalAnalysis(
            l1_ratio=self.l1_ratio, n_alphas=self.n_alphas, alpha_min_ratio=self.alpha_min_ratio,
            max_iter=self.max_iter, fit_baseline_model=True)
        self.model_.fit(X, y)
        alphas = np.asarray(self.model_.alphas_)
        self.alpha_used_ = float(alphas[np.argmin(np.abs(np.log(alphas) - np.log(self.alpha)))])
        self.coef_ = self.model_.coef_[:, list(alphas).index(self.alpha_used_)]
        return self

    def predict(self, X):
        return self.model_.predict(X, alpha=self.alpha_used_)

    def predict_survival_function(self, X, return_array=False):
        return self.model_.predict_survival_function(X, alpha=self.alpha_used_, return_array=return_array)


class MedianDaysRegressor(BaseEstimator):
    """Median (quantile 0.5) linear regression of survival days on uncensored rows.

    The BraTS OS baseline. ``predict`` returns a risk (= -days) so the model
    ranks like the others; ``predict_days`` returns the days.
    """

    def __init__(self, alpha=0.0):
        self.alpha = alpha

    def fit(self, X, y):
        from sklearn.linear_model import QuantileRegressor

        event = np.asarray(y["event"], dtype=bool)
        rows = event if event.sum() >= 2 else np.ones(len(y), dtype=bool)
        self.model_ = QuantileRegressor(quantile=0.5, alpha=self.alpha, solver="highs")
        self.model_.fit(np.asarray(X, dtype=float)[rows], np.asarray(y["time"], dtype=float)[rows])
        return self

    def predict_days(self, X):
        return self.model_.predict(np.asarray(X, dtype=float))

    def predict(self, X):
        return -self.predict_days(X)


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model and what it can predict."""

    build: Callable  # (options: dict, covariates: list, seed: int, top_n) -> estimator
    defaults: dict
    survival_function: bool = True
    predicts_days: bool = False
    description: str = ""
    input: str = "features"  # features (lab.run_model) | bags (mil.run_bag_model) | volumes (volumes.run_volume_model)


def _preprocess(top_n, covariates):
    return [("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("select", UnivariateCIndexSelector(top_n=top_n, keep=tuple(covariates)))]


def _age_preprocess(options):
    return [("columns", ColumnSelector(columns=tuple(options.get("columns", ("age",))))),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler())]


def _pipeline(steps):
    return Pipeline(steps).set_output(transform="pandas")


def _cox(o):
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    return CoxPHSurvivalAnalysis(alpha=o["alpha"], ties=o["ties"], n_iter=o["n_iter"])


def build_cox(o, covariates, seed, top_n):
    return _pipeline(_preprocess(top_n, covariates) + [("model", _cox(o))])


def build_coxnet(o, covariates, seed, top_n):
    model = CoxnetFixed(alpha=o["alpha"], l1_ratio=o["l1_ratio"], n_alphas=o["n_alphas"],
                        alpha_min_ratio=o["alpha_min_ratio"])
    return _pipeline(_preprocess(top_n, covariates) + [("model", model)])


def build_rsf(o, covariates, seed, top_n):
    from sksurv.ensemble import RandomSurvivalForest

    model = RandomSurvivalForest(n_estimators=o["n_estimators"], min_samples_leaf=o["min_samples_leaf"],
                                 max_features=o["max_features"], n_jobs=o["n_jobs"], random_state=seed)
    return _pipeline(_preprocess(top_n, covariates) + [("model", model)])


def build_gbs(o, covariates, seed, top_n):
    from sksurv.ensemble import GradientBoostingSurvivalAnalysis

    model = GradientBoostingSurvivalAnalysis(
        n_estimators=o["n_estimators"], learning_rate=o["learning_rate"], max_depth=o["max_depth"],
        subsample=o["subsample"], min_samples_leaf=o["min_samples_leaf"], random_state=seed)
    return _pipeline(_preprocess(top_n, covariates) + [("model", model)])


def build_pca_cox(o, covariates, seed, top_n):
    steps = _preprocess(top_n, covariates) + [
        ("pca", SafePCA(n_components=o["n_components"], random_state=seed)), ("model", _cox(o))]
    return _pipeline(steps)


def build_age_cox(o, covariates, seed, top_n):
    return _pipeline(_age_preprocess(o) + [("model", _cox(o))])


def build_age_median(o, covariates, seed, top_n):
    return _pipeline(_age_preprocess(o) + [("model", MedianDaysRegressor(alpha=o["alpha"]))])


def build_deepsurv(o, covariates, seed, top_n):
    from .deep import DeepSurv

    model = DeepSurv(**{k: v for k, v in o.items()}, random_state=seed)
    return _pipeline(_preprocess(top_n, covariates) + [("model", model)])


def build_deephit(o, covariates, seed, top_n):
    from .deep import DeepHit

    model = DeepHit(**{k: v for k, v in o.items()}, random_state=seed)
    return _pipeline(_preprocess(top_n, covariates) + [("model", model)])


COX_DEFAULTS = {"alpha": 1.0, "ties": "breslow", "n_iter": 100}

MODELS: dict[str, ModelSpec] = {
    "cox": ModelSpec(build_cox, dict(COX_DEFAULTS), description="Cox PH, ridge penalty alpha"),
    "coxnet": ModelSpec(build_coxnet, {"alpha": 0.05, "l1_ratio": 0.5, "n_alphas": 50,
                                       "alpha_min_ratio": 0.01},
                        description="elastic-net Cox at a fixed penalty"),
    "rsf": ModelSpec(build_rsf, {"n_estimators": 200, "min_samples_leaf": 15, "max_features": "sqrt",
                                 "n_jobs": 1}, description="random survival forest"),
    "gbs": ModelSpec(build_gbs, {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3,
                                 "subsample": 1.0, "min_samples_leaf": 5},
                     description="gradient-boosted Cox trees"),
    "pca_cox": ModelSpec(build_pca_cox, {**COX_DEFAULTS, "n_components": 5},
                         description="PCA of the selected features, then Cox"),
    "age_cox": ModelSpec(build_age_cox, {**COX_DEFAULTS, "columns": ["age"]},
                         description="Cox on age only"),
    "age_median": ModelSpec(build_age_median, {"alpha": 0.0, "columns": ["age"]},
                            survival_function=False, predicts_days=True,
                            description="median regression of days on age (uncensored rows)"),
    "deepsurv": ModelSpec(build_deepsurv, {"hidden": [32, 32], "dropout": 0.1, "epochs": 200,
                                           "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 256,
                                           "ties": "breslow"},
                          description="DeepSurv MLP, Cox partial likelihood"),
    "deephit": ModelSpec(build_deephit, {"hidden": [32, 32], "dropout": 0.1, "epochs": 200,
                                         "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 256,
                                         "n_bins": 30, "alpha": 0.5, "sigma": 0.1},
                         description="DeepHit single risk, discrete time"),
}


# ---------------------------------------------------------------- slice-bag, 3D and distilled models
# Bag and volume models take per-subject inputs, not the feature matrix: their build returns the
# estimator itself (fit on a list of inputs); run them with mil.run_bag_model /
# volumes.run_volume_model. The distilled MLPs are ordinary feature pipelines (lab.run_model).


def _bag_builder(aggregator, head="cox"):
    def build(o, covariates, seed, top_n):
        from .mil import BagSurvivalModel

        return BagSurvivalModel(aggregator=aggregator, head=head, **o, random_state=seed)
    return build


def _volume_builder(backbone):
    def build(o, covariates, seed, top_n):
        from .volumes import VolumeSurvivalModel

        return VolumeSurvivalModel(backbone=backbone, **o, random_state=seed)
    return build


def _distill_builder(mode):
    def build(o, covariates, seed, top_n):
        from .distill import DistilledRegressor

        return _pipeline(_preprocess(top_n, covariates)
                         + [("model", DistilledRegressor(mode=mode, **o, random_state=seed))])
    return build


BAG_DEFAULTS = {"encoder": "resnet18", "encoder_options": {}, "size": 64, "channels": None,
                "pretrain_epochs": 2, "pretrain_lr": 1e-3, "pretrain_batch_size": 32, "freeze": "all",
                "epochs": 40, "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 32, "hidden": [],
                "dropout": 0.1, "ties": "breslow", "device": "auto", "amp": True, "n_threads": None}
ATTENTION_DEFAULTS = {"attention_dim": 64}
DAAL_DEFAULTS = {"attention_dim": 64, "value_dim": 64, "daal_hidden": [32], "daal_scope": "bag"}
SOFT_DEEPHIT_DEFAULTS = {"hidden": [64], "n_bins": 24, "grid": "quantile", "alpha": 0.5, "sigma": 0.1}
VOLUME_DEFAULTS = {"size": 48, "crop": "brain", "epochs": 20, "lr": 1e-4, "weight_decay": 1e-4,
                   "batch_size": 8, "augment": True, "ties": "breslow", "device": "auto", "amp": True,
                   "n_threads": None}
DISTILL_DEFAULTS = {"teacher_hidden": [128, 64, 32], "student_hidden": [16], "dropout": 0.1,
                    "epochs": 100, "batch_size": 4, "lr": 1e-3, "weight_decay": 1e-4,
                    "val_fraction": 0.2, "soft_weight": 0.5, "events_only": True, "n_threads": 1}

MODELS.update({
    "bag_mean_cox": ModelSpec(_bag_builder("mean"), dict(BAG_DEFAULTS), input="bags",
                              description="slice encoder, mean pooling over the bag, Cox head"),
    "bag_max_cox": ModelSpec(_bag_builder("max"), dict(BAG_DEFAULTS), input="bags",
                             description="slice encoder, max pooling over the bag, Cox head"),
    "bag_attention_mil": ModelSpec(_bag_builder("gated"), {**BAG_DEFAULTS, **ATTENTION_DEFAULTS},
                                   input="bags", description="attention MIL: gated attention (Ilse 2018), Cox head"),
    "daal_single": ModelSpec(_bag_builder("daal_single"), {**BAG_DEFAULTS, **DAAL_DEFAULTS}, input="bags",
                             description="attention: DAAL-single, sagittal anchor attention, Cox loss"),
    "daal_multiple": ModelSpec(_bag_builder("daal_multiple"), {**BAG_DEFAULTS, **DAAL_DEFAULTS},
                               input="bags",
                               description="attention: DAAL-multiple, max of the three anchor-plane risks"),
    "bag_soft_deephit": ModelSpec(_bag_builder("soft", "deephit"), {**BAG_DEFAULTS, **SOFT_DEEPHIT_DEFAULTS},
                                  input="bags", description="attention: soft attention over slices, DeepHit"),
    "cnn3d_resnet18": ModelSpec(_volume_builder("resnet18"), dict(VOLUME_DEFAULTS), input="volumes",
                                description="MONAI 3D ResNet18 on the 4 stacked sequences, Cox head"),
    "cnn3d_densenet121": ModelSpec(_volume_builder("densenet121"), dict(VOLUME_DEFAULTS), input="volumes",
                                   description="MONAI 3D DenseNet121 on the 4 stacked sequences, Cox head"),
    "distill_student": ModelSpec(_distill_builder("distill"), dict(DISTILL_DEFAULTS), survival_function=False,
                                 predicts_days=True,
                                 description="student MLP distilled from a deeper teacher MLP, days"),
    "mlp_student": ModelSpec(_distill_builder("student"), dict(DISTILL_DEFAULTS), survival_function=False,
                             predicts_days=True, description="the student MLP alone (no teacher), days"),
    "mlp_teacher": ModelSpec(_distill_builder("teacher"), dict(DISTILL_DEFAULTS), survival_function=False,
                             predicts_days=True, description="the teacher MLP alone, days"),
})


def model_options(name: str, params: dict | None = None) -> dict:
    """Defaults of a model updated by ``params['model_params'][name]``."""
    if name not in MODELS:
        raise ConfigError(f"unknown survival model {name!r}; known: {sorted(MODELS)}")
    options = dict(MODELS[name].defaults)
    extra = ((params or {}).get("model_params") or {}).get(name) or {}
    unknown = set(extra) - set(options)
    if unknown:
        raise ConfigError(f"survival model {name!r} has no option(s) {sorted(unknown)}")
    options.update(extra)
    return options


def build_model(name: str, params: dict | None = None, covariates=(), seed: int = 0):
    """A fresh, unfitted pipeline for a registered model."""
    options = model_options(name, params)
    top_n = (params or {}).get("top_n", 20)
    return MODELS[name].build(options, list(covariates), int(seed), top_n)


def transform_until_model(pipe, X):
    """Features as the final estimator sees them."""
    return pipe[:-1].transform(X)


def selected_features(pipe) -> list[str]:
    """Columns the fitted pipeline feeds forward after its selection step."""
    for key in ("select", "columns"):
        if key in pipe.named_steps:
            return list(pipe.named_steps[key].selected_features_)
    return []
