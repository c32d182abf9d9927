"""Feature-table survival models as scikit-learn Pipelines, and the builders of every model.

Pipeline (fitted inside the training fold only): median imputation -> standardisation ->
univariate C-index feature ranking (top n, always keeping the clinical covariates) ->
estimator. ``age_cox`` and ``age_median`` select the age column first. Every estimator
predicts a risk score (higher = shorter survival); ``age_median`` and the distilled MLPs also
predict days (risk = -days). Slice-bag and 3-D models are built here too (their estimator
itself, fitted on lists of per-subject inputs); :mod:`btpipe.survival.registry` names the
builder of each model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import ConfigError
from .metrics import univariate_cindex

# ---------------------------------------------------------------- transformers


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
        # a column that cannot rank (no comparable pair) counts as chance
        c = np.nan_to_num(univariate_cindex(frame.to_numpy(), y["event"], y["time"]), nan=0.5)
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



# ---------------------------------------------------------------- builders


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


# ---------------------------------------------------------------- slice-bag, 3-D and distilled models


def _bag(aggregator, head="cox"):
    def build(o, covariates, seed, top_n):
        from .mil import BagSurvivalModel

        return BagSurvivalModel(aggregator=aggregator, head=head, **o, random_state=seed)
    return build


def _volume(backbone):
    def build(o, covariates, seed, top_n):
        from .volumes import VolumeSurvivalModel

        return VolumeSurvivalModel(backbone=backbone, **o, random_state=seed)
    return build


def _distill(mode):
    def build(o, covariates, seed, top_n):
        from .distill import DistilledRegressor

        return _pipeline(_preprocess(top_n, covariates)
                         + [("model", DistilledRegressor(mode=mode, **o, random_state=seed))])
    return build


build_bag_mean_cox = _bag("mean")
build_bag_max_cox = _bag("max")
build_bag_attention_mil = _bag("gated")
build_daal_single = _bag("daal_single")
build_daal_multiple = _bag("daal_multiple")
build_bag_soft_deephit = _bag("soft", "deephit")
build_cnn3d_resnet18 = _volume("resnet18")
build_cnn3d_densenet121 = _volume("densenet121")
build_distill_student = _distill("distill")
build_mlp_student = _distill("student")
build_mlp_teacher = _distill("teacher")


# ---------------------------------------------------------------- fitted pipelines


def transform_until_model(pipe, X):
    """Features as the final estimator sees them."""
    return pipe[:-1].transform(X)


def selected_features(pipe) -> list[str]:
    """Columns the fitted pipeline feeds forward after its selection step."""
    for key in ("select", "columns"):
        if key in pipe.named_steps:
            return list(pipe.named_steps[key].selected_features_)
    return []
