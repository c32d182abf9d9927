"""Running a slice-bag or 3-D survival model through the lab's runner, as the workflow does."""

from __future__ import annotations

from btpipe.survival.fit import Inputs, run_model
from btpipe.survival.registry import ResolvedModel
from btpipe.survival.step import load_subject_inputs


def run_image_model(name, paths, y, ids, folds, out_dir, params, seed=0, pretrain_cache=None,
                    holdout_ids=(), new_ids=None):
    """Cross-validate model ``name`` on the subjects' files ``paths`` ({subject: path or
    [paths]}); ``new_ids`` are predicted by the final model. Returns the predictions."""
    model = ResolvedModel.from_params(name, params, seed, pretrain_cache=pretrain_cache)
    files = {str(s): (p if isinstance(p, (list, tuple)) else [p]) for s, p in paths.items()}
    ids = [str(s) for s in ids]
    inputs = Inputs(load_subject_inputs(model, files, ids), model.kind)
    new = None
    if new_ids is not None:
        new = Inputs(load_subject_inputs(model, files, list(new_ids)), model.kind)
    return run_model(model, inputs, y, ids, folds, out_dir, holdout_ids=holdout_ids,
                     new_ids=list(new_ids or []), new_inputs=new)
