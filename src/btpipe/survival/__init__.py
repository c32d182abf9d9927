"""The survival lab: prepare a table, fold it, fit and score survival models.

By phase: ``data`` and ``cohort`` (table -> X, y, ids; who is cross-validated and who is
only predicted), ``folds`` (repeated stratified k-fold), ``registry`` (the models, their
defaults, a model resolved once), ``pipelines`` (scikit-learn models and every builder),
``deep``, ``distill``, ``mil``, ``volumes`` (the torch estimators) on ``training`` (one
loop), ``losses`` and ``baseline`` (survival functions), ``fit`` (the cross-validation
runner), ``apply`` (saved final models, new subjects), ``metrics`` (per-fold scores),
``compare`` (summaries), ``submission`` (challenge files), ``cli`` and ``step`` (entry points).
"""
