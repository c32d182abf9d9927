"""The survival models btpipe knows, their defaults, and a model resolved once for a run.

Light on purpose (no scikit-learn or torch at import): the workflow reads it while it plans
the DAG. A :class:`ModelSpec` names the function that builds the model (imported when a model
is built), its default options, what it predicts and what it reads (the feature table, slice
bags or volumes). :class:`ResolvedModel` is one model with every option settled from the
survival section; the cross-validation runner, the card and the saved model all read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import ConfigError

DAYS_PER_MONTH = 30.44
KINDS = ("features", "bags", "volumes")

# The survival section's defaults (workflow/schemas/config.schema.yaml holds the same values).
DEFAULT_PARAMS = {
    "folds": 5,
    "repeats": 1,
    "top_n": 20,
    "models": ["cox", "rsf"],
    "horizons_days": [365, 730],
    "class_cutoffs_months": [10, 15],
    "class_cutoffs_days": None,
    "tau": None,
    "n_permutations": 5000,
    "holdout_fraction": 0.0,
    "model_params": {},
}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model and what it can predict."""

    builder: str            # "module:function" in btpipe.survival: (options, covariates, seed, top_n) -> estimator
    defaults: dict
    survival_function: bool = True
    predicts_days: bool = False
    description: str = ""
    input: str = "features"  # features (a row of the table) | bags (slice bags) | volumes (3-D images)

    def build(self, options: dict, covariates, seed: int, top_n):
        module, function = self.builder.split(":")
        build = getattr(importlib.import_module(f"btpipe.survival.{module}"), function)
        return build(options, list(covariates), int(seed), top_n)


def _spec(builder, defaults, **kw) -> ModelSpec:
    return ModelSpec(f"pipelines:{builder}", dict(defaults), **kw)


COX_DEFAULTS = {"alpha": 1.0, "ties": "breslow", "n_iter": 100}
DEEP_DEFAULTS = {"hidden": [32, 32], "dropout": 0.1, "epochs": 200, "lr": 1e-3, "weight_decay": 1e-4,
                 "batch_size": 256}
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

MODELS: dict[str, ModelSpec] = {
    "cox": _spec("build_cox", COX_DEFAULTS, description="Cox PH, ridge penalty alpha"),
    "coxnet": _spec("build_coxnet", {"alpha": 0.05, "l1_ratio": 0.5, "n_alphas": 50,
                                     "alpha_min_ratio": 0.01},
                    description="elastic-net Cox at a fixed penalty"),
    "rsf": _spec("build_rsf", {"n_estimators": 200, "min_samples_leaf": 15, "max_features": "sqrt",
                               "n_jobs": 1}, description="random survival forest"),
    "gbs": _spec("build_gbs", {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3,
                               "subsample": 1.0, "min_samples_leaf": 5},
                 description="gradient-boosted Cox trees"),
    "pca_cox": _spec("build_pca_cox", {**COX_DEFAULTS, "n_components": 5},
                     description="PCA of the selected features, then Cox"),
    "age_cox": _spec("build_age_cox", {**COX_DEFAULTS, "columns": ["age"]},
                     description="Cox on age only"),
    "age_median": _spec("build_age_median", {"alpha": 0.0, "columns": ["age"]},
                        survival_function=False, predicts_days=True,
                        description="median regression of days on age (uncensored rows)"),
    "deepsurv": _spec("build_deepsurv", {**DEEP_DEFAULTS, "ties": "breslow"},
                      description="DeepSurv MLP, Cox partial likelihood"),
    "deephit": _spec("build_deephit", {**DEEP_DEFAULTS, "n_bins": 30, "alpha": 0.5, "sigma": 0.1},
                     description="DeepHit single risk, discrete time"),
    # Slice-bag and 3-D models read per-subject images, not the feature table.
    "bag_mean_cox": _spec("build_bag_mean_cox", BAG_DEFAULTS, input="bags",
                          description="slice encoder, mean pooling over the bag, Cox head"),
    "bag_max_cox": _spec("build_bag_max_cox", BAG_DEFAULTS, input="bags",
                         description="slice encoder, max pooling over the bag, Cox head"),
    "bag_attention_mil": _spec("build_bag_attention_mil", {**BAG_DEFAULTS, **ATTENTION_DEFAULTS},
                               input="bags",
                               description="attention MIL: gated attention (Ilse 2018), Cox head"),
    "daal_single": _spec("build_daal_single", {**BAG_DEFAULTS, **DAAL_DEFAULTS}, input="bags",
                         description="attention: DAAL-single, sagittal anchor attention, Cox loss"),
    "daal_multiple": _spec("build_daal_multiple", {**BAG_DEFAULTS, **DAAL_DEFAULTS}, input="bags",
                           description="attention: DAAL-multiple, max of the three anchor-plane risks"),
    "bag_soft_deephit": _spec("build_bag_soft_deephit", {**BAG_DEFAULTS, **SOFT_DEEPHIT_DEFAULTS},
                              input="bags",
                              description="attention: soft attention over slices, DeepHit"),
    "cnn3d_resnet18": _spec("build_cnn3d_resnet18", VOLUME_DEFAULTS, input="volumes",
                            description="MONAI 3D ResNet18 on the 4 stacked sequences, Cox head"),
    "cnn3d_densenet121": _spec("build_cnn3d_densenet121", VOLUME_DEFAULTS, input="volumes",
                               description="MONAI 3D DenseNet121 on the 4 stacked sequences, Cox head"),
    # The distilled MLPs are feature-table models that predict days.
    "distill_student": _spec("build_distill_student", DISTILL_DEFAULTS, survival_function=False,
                             predicts_days=True,
                             description="student MLP distilled from a deeper teacher MLP, days"),
    "mlp_student": _spec("build_mlp_student", DISTILL_DEFAULTS, survival_function=False,
                         predicts_days=True, description="the student MLP alone (no teacher), days"),
    "mlp_teacher": _spec("build_mlp_teacher", DISTILL_DEFAULTS, survival_function=False,
                         predicts_days=True, description="the teacher MLP alone, days"),
}


def resolve_params(params: dict | None) -> dict:
    """The survival section with defaults filled in; class cut-offs in days (when given)
    replace the months, so one value flows on."""
    out = dict(DEFAULT_PARAMS)
    out.update({k: v for k, v in (params or {}).items() if v is not None})
    unknown = [m for m in out["models"] if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown survival model(s) {unknown}; known: {sorted(MODELS)}")
    if out.get("class_cutoffs_days"):
        out["class_cutoffs_months"] = [d / DAYS_PER_MONTH for d in out["class_cutoffs_days"]]
    return out


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


@dataclass(frozen=True)
class ResolvedModel:
    """One model with every setting decided: built once per run, read everywhere after."""

    name: str
    spec: ModelSpec
    options: dict
    top_n: int | None
    horizons: tuple
    cutoffs_months: tuple
    tau: float | None
    seed: int = 0
    extra: dict = field(default_factory=dict)  # pretrain_cache: slice-bag encoder pre-trainings

    @classmethod
    def from_params(cls, name: str, params: dict | None, seed: int = 0, **extra) -> "ResolvedModel":
        params = resolve_params(params)
        return cls(name, MODELS[name], model_options(name, params), params.get("top_n"),
                   tuple(float(h) for h in params["horizons_days"]),
                   tuple(params["class_cutoffs_months"]), params.get("tau"), int(seed), extra)

    @property
    def kind(self) -> str:
        return self.spec.input

    def build(self, covariates=()):
        """A fresh, unfitted estimator (a scikit-learn Pipeline for feature-table models)."""
        model = self.spec.build(self.options, covariates, self.seed, self.top_n)
        if self.kind == "bags" and self.extra.get("pretrain_cache") is not None:
            model.pretrain_cache_ = str(self.extra["pretrain_cache"])  # shared by the run's bag models
        return model


def build_model(name: str, params: dict | None = None, covariates=(), seed: int = 0):
    """A fresh, unfitted estimator for a registered model."""
    return ResolvedModel.from_params(name, params, seed).build(covariates)


# The survival-section keys each kind of job reads, so that a job's parameters change only
# when its result would (adding a model to `models` reruns no other model).
OUTCOME_KEYS = ("time", "event", "covariates", "subset")
MODEL_KEYS = OUTCOME_KEYS + ("top_n", "horizons_days", "class_cutoffs_months", "class_cutoffs_days",
                             "tau")
FOLD_KEYS = OUTCOME_KEYS + ("folds", "repeats", "holdout_fraction")
SUMMARY_KEYS = OUTCOME_KEYS + ("class_cutoffs_months", "class_cutoffs_days", "n_permutations")


def section_for_model(survival: dict, name: str) -> dict:
    """What one model's job reads: the outcome columns, the shared scoring settings and its
    own options."""
    out = {k: survival[k] for k in MODEL_KEYS if k in survival}
    own = (survival.get("model_params") or {}).get(name)
    out["model_params"] = {name: own} if own else {}
    return out


def section_keys(survival: dict, keys) -> dict:
    return {k: survival[k] for k in keys if k in survival}
