"""Lesion-wise BraTS scoring (the ranking metrics since BraTS 2023), by panoptica.

The evaluator is configured exactly as the official BraTS evaluation package
(``brats-evaluation`` 0.0.10, its ``configs/config_*.yaml``, which differ
between challenges only in their label groups):

* Lesions are the connected components (26-connected in 3D) of each region
  (WT, TC, ET), in the reference and in the prediction separately.
* Matching: one-to-one, maximum bipartite matching on lesion Dice; a pair
  counts when its Dice exceeds 1e-6 (they overlap at all). Matched
  reference lesions are true positives (TP), unmatched reference lesions
  false negatives (FN, missed), unmatched predicted lesions false positives
  (FP, spurious).
* lw_dice, lw_hd95, lw_nsd: the mean over the matched (TP) lesions of each
  pair's Dice, 95th-percentile Hausdorff distance (mm; the surface distances
  of both directions pooled) and normalised surface Dice (tolerance: the
  smallest voxel spacing, 1 mm in BraTS space).
  Missed and spurious lesions enter through the counts, not these means.
* No matched lesion but lesions on either side: lw_dice 0, lw_nsd 0 and
  lw_hd95 373.13 mm (panoptica gives infinity; btpipe reports the BraTS
  maximum, as for the whole-region HD95, so cohort means stay finite).
  No lesion on either side: lw_dice, lw_hd95 and lw_nsd are undefined (NaN,
  null in JSON), and every count is 0.

Regions are handed to panoptica as one code map (0 background, 1 WT only,
2 TC but not ET, 3 ET) so that every label convention, including tissues in
no region such as a resection cavity, scores through one evaluator.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings

import numpy as np

from .. import labels as lab
from ..masks import HD95_EMPTY, crop_to_union

# Panoptica group (lower-case, as it names groups) -> region codes it merges.
_REGION_CODES = {"wt": [1, 2, 3], "tc": [2, 3], "et": [3]}
# The official configs' matching threshold on lesion Dice.
MATCHING_THRESHOLD = 1e-6
# panoptica crops every region to its bounding box plus 2 voxels before anything
# else; cropping to the tumour's box plus the same margin first changes no value.
PANOPTICA_CROP_MARGIN = 2


def _zero_tp(result_name: str):
    """Zero-TP rule of the official configs: `result_name` unless nothing exists at all (NaN)."""
    from panoptica.utils.edge_case_handling import EdgeCaseResult, MetricZeroTPEdgeCaseHandling

    value = EdgeCaseResult[result_name]
    return MetricZeroTPEdgeCaseHandling(empty_prediction_result=value, empty_reference_result=value,
                                        no_instances_result=EdgeCaseResult.NAN, normal=value)


@functools.cache
def brats_evaluator():
    """The panoptica evaluator of the official BraTS configuration, over WT/TC/ET codes."""
    from panoptica import (ConnectedComponentsInstanceApproximator, InputType,
                           MaxBipartiteMatching, Metric, Panoptica_Evaluator,
                           disable_citation_reminder)
    from panoptica.utils.edge_case_handling import EdgeCaseHandler, EdgeCaseResult
    from panoptica.utils.label_group import LabelMergeGroup
    from panoptica.utils.segmentation_class import SegmentationClassGroups

    disable_citation_reminder()  # it prints on stdout; docs/segmentation.md cites panoptica
    metrics = [Metric.DSC, Metric.NSD, Metric.HD95]
    # Nested regions share codes on purpose; panoptica prints a note about that.
    with contextlib.redirect_stdout(io.StringIO()):
        groups = SegmentationClassGroups(
            {name: LabelMergeGroup(codes) for name, codes in _REGION_CODES.items()})
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC,
                                              matching_threshold=MATCHING_THRESHOLD),
        edge_case_handler=EdgeCaseHandler(
            {Metric.DSC: _zero_tp("ZERO"), Metric.NSD: _zero_tp("ZERO"),
             Metric.HD95: _zero_tp("INF")},
            empty_list_std=EdgeCaseResult.NAN),
        segmentation_class_groups=groups,
        instance_metrics=metrics,
        global_metrics=metrics,
    )


def region_codes(regions) -> np.ndarray:
    """Nested boolean regions [3, X, Y, Z] (WT, TC, ET) -> uint8 codes 0-3."""
    wt, tc, et = (np.asarray(r, bool) for r in regions)
    if (tc & ~wt).any() or (et & ~tc).any():
        raise ValueError("regions are not nested (ET within TC within WT)")
    return (wt.astype(np.uint8) + tc + et).astype(np.uint8)


def _finite_hd95(value) -> float:
    value = float(value)
    return HD95_EMPTY if math.isinf(value) else value


def _optional(value) -> float | None:
    return None if value is None else float(value)


def _lesion_rows(instances) -> list[dict]:
    """panoptica's per-reference-lesion rows -> btpipe's (matched first, then missed)."""
    return [{"lesion": i, "volume_mm3": float(row["volume"]), "voxels": int(row["voxel_count"]),
             "detected": bool(row["is_matched"]), "dice": _optional(row.get("sq_dsc")),
             "hd95": _optional(row.get("sq_hd95")), "nsd": _optional(row.get("sq_nsd"))}
            for i, row in enumerate(instances, start=1)]


def _region_scores(result) -> dict:
    values = result.to_dict(output_individual_instance_metrics=True)
    return {"lw_dice": float(values["sq_dsc"]), "lw_hd95": _finite_hd95(values["sq_hd95"]),
            "lw_nsd": float(values["sq_nsd"]), "lesions_tp": int(values["tp"]),
            "lesions_fp": int(values["fp"]), "lesions_fn": int(values["fn"]),
            "lesions": _lesion_rows(values.get("reference_instances", []))}


def score_lesionwise(pred_regions, ref_regions, spacing=(1.0, 1.0, 1.0)) -> dict:
    """Lesion-wise scores of boolean region stacks [3, X, Y, Z] (WT, TC, ET).

    Returns {region: {lw_dice, lw_hd95, lw_nsd, lesions_tp, lesions_fp,
    lesions_fn, lesions}}, where `lesions` lists every reference lesion:
    {lesion, volume_mm3, voxels, detected, dice, hd95, nsd} (None when missed).
    """
    pred, ref = region_codes(pred_regions), region_codes(ref_regions)
    if pred.any() or ref.any():
        pred, ref = crop_to_union(pred, ref, margin=PANOPTICA_CROP_MARGIN)
    with warnings.catch_warnings():
        # panoptica's whole-region NSD (not reported here) warns that it uses 0.5 mm.
        warnings.filterwarnings("ignore", message="The threshold is set to 0.5")
        results = brats_evaluator().evaluate(
            pred, ref, voxelspacing=tuple(float(s) for s in spacing))
    return {region: _region_scores(results[region.lower()]) for region in lab.REGIONS}
