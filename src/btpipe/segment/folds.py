"""Stable k-fold assignment of subjects for cross-validated segmentation.

Each subject's fold is a hash of (seed, subject id) modulo k, so it depends on
nothing else: adding or removing other subjects never moves it.

Limitation (documented in docs/segmentation.md): a pure per-subject hash can
leave a fold empty in a tiny cohort (with n subjects the chance is about
k * (1 - 1/k)**n). No rule can both fill every fold and never move anyone
(with k=2 and three subjects, two share a bucket and removing the third
empties a fold), so when a bucket is empty and len(subjects) >= k we apply a
deterministic repair: the empty fold takes the subject with the smallest
secondary hash from the currently largest fold. Repair only happens while
some hash bucket is empty; once every bucket holds a subject, all subjects sit
in their own hash bucket and from then on adding subjects moves no one.
"""

from __future__ import annotations

import hashlib

from ..errors import ConfigError
from ..io import write_json


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def hash_fold(subject: str, k: int, seed: int = 0) -> int:
    """The fold a subject falls in by its hash alone."""
    return _hash(f"{seed}:{subject}") % k


def assign_folds(subjects, k: int, seed: int = 0) -> dict[str, int]:
    """{subject: fold in 0..k-1}; stable under adding subjects (see module doc)."""
    subjects = [str(s) for s in subjects]
    if len(set(subjects)) != len(subjects):
        raise ConfigError("segmentation folds: subject ids must be unique")
    if int(k) < 2:
        raise ConfigError(f"segmentation.folds must be >= 2, got {k}")
    k = int(k)
    folds = {s: hash_fold(s, k, seed) for s in subjects}
    if len(subjects) >= k:
        _repair_empty_folds(folds, k, seed)
    return dict(sorted(folds.items()))


def _repair_empty_folds(folds: dict[str, int], k: int, seed: int) -> None:
    """Move one subject into each empty fold, deterministically (in place)."""
    for empty in range(k):
        members = {f: sorted(s for s, g in folds.items() if g == f) for f in range(k)}
        if members[empty]:
            continue
        # Largest fold gives; ties broken by the lower fold index.
        donor = max(range(k), key=lambda f: (len(members[f]), -f))
        mover = min(members[donor], key=lambda s: _hash(f"{seed}:repair:{s}"))
        folds[mover] = empty


def fold_members(mapping: dict[str, int], k: int) -> list[list[str]]:
    return [sorted(s for s, f in mapping.items() if f == fold) for fold in range(k)]


def write_folds(path, mapping: dict[str, int], k: int, seed: int | None = None) -> None:
    """Write models/segmentation/folds.json atomically.

    Content: {"k", "seed", "method", "folds": {subject: fold}, "members": [[...], ...]}.
    """
    write_json(path, {
        "k": int(k),
        "seed": seed,
        "method": "sha256(f'{seed}:{subject}') % k, empty folds repaired deterministically",
        "folds": {str(s): int(f) for s, f in sorted(mapping.items())},
        "members": fold_members(mapping, k),
    })


# ---------------------------------------------------------------- which model for whom

FINAL = "final"


def fold_model_names(mapping: dict[str, int], final: bool = True) -> list[str]:
    """The k-fold models that hold out at least one subject, then (``final``) the final model."""
    return [f"fold{k}" for k in sorted(set(mapping.values()))] + ([FINAL] if final else [])


def _fold_index(name: str) -> int:
    return int(name.removeprefix("fold"))


def training_subjects(mapping: dict[str, int], model: str) -> list[str]:
    """Subjects a model trains on: every labelled subject outside its fold (all, for final)."""
    if model == FINAL:
        return sorted(mapping)
    return sorted(s for s, f in mapping.items() if f != _fold_index(model))


def monitoring_subjects(mapping: dict[str, int], model: str) -> list[str]:
    """Held-out subjects a fold model scores for its learning curve (none for final)."""
    if model == FINAL:
        return []
    return sorted(s for s, f in mapping.items() if f == _fold_index(model))


def segmenting_models(subject: str, mapping: dict[str, int], unlabelled: str = "ensemble") -> list[str]:
    """Names of the trained models that segment ``subject`` (train mode).

    A labelled subject gets the fold model that never saw it; a subject without
    labels gets every fold model (their probabilities are averaged) or, with
    ``unlabelled='final'``, the model trained on all labelled subjects.
    """
    if subject in mapping:
        return [f"fold{mapping[subject]}"]
    if unlabelled == "ensemble":
        return fold_model_names(mapping, final=False) or [FINAL]
    if unlabelled == FINAL:
        return [FINAL]
    raise ConfigError(f"segmentation.unlabelled must be ensemble or final, got {unlabelled!r}")
