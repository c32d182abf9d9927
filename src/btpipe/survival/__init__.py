"""The survival lab: prepare a table, fold it, fit and score survival models.

Submodules: ``data`` (table -> X, y, ids), ``folds`` (repeated stratified
k-fold), ``models`` (the registry of sklearn pipelines), ``deep`` (DeepSurv
and DeepHit in PyTorch), ``metrics`` (per-fold scores) and ``lab`` (running
models, writing predictions, cards, metric tables and comparisons).
"""
