"""BraTS scoring: Dice, HD95, sensitivity and specificity for WT, TC and ET.

Definitions (chosen to match MONAI's ``compute_dice`` and
``compute_hausdorff_distance(percentile=95)``, which follow the BraTS rules):

* Dice = 2|P & R| / (|P| + |R|).
* HD95: surfaces are the mask voxels removed by one binary erosion
  (6-connected structuring element, outside the image counts as background);
  distances are exact Euclidean distances in mm (voxel spacing applied) from
  each surface voxel of one mask to the nearest surface voxel of the other;
  HD95 = max(95th percentile pred->ref, 95th percentile ref->pred), with
  linear interpolation between order statistics (``numpy.percentile``).
* Both masks empty: Dice 1, HD95 0. Exactly one empty: Dice 0, HD95 373.13
  (the BraTS maximum, the diagonal of the 240x240x155 box).
* Sensitivity = TP / (TP + FN), 1 when the reference is empty (nothing to
  miss); specificity = TN / (TN + FP) over the whole image grid, 1 when
  the image holds no background.

These whole-region metrics are the `legacy` metric set; the `lesionwise` set
(BraTS 2023+ lesion-wise Dice, HD95, NSD and lesion counts) lives in
`lesionwise.py` and is asked for with ``metric_sets``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import labels as lab
from ..errors import InputError
from ..io import read_label_volume, write_json, read_json
from ..masks import HD95_EMPTY, crop_to_union, dice  # noqa: F401 (dice: part of the scorers' API)

METRICS = ("dice", "hd95", "sensitivity", "specificity")
METRIC_SETS = ("legacy", "lesionwise")
# Names of the lesion-wise set (filled by lesionwise.score_lesionwise; named
# here so that reading the tables does not import panoptica).
LESIONWISE_METRICS = ("lw_dice", "lw_hd95", "lw_nsd", "lesions_tp", "lesions_fp", "lesions_fn")
ALL_METRICS = METRICS + LESIONWISE_METRICS


def load_label_map(path, what="segmentation"):
    """Read a label NIfTI -> (int array, spacing tuple, affine)."""
    img, data = read_label_volume(path, what)
    return data, tuple(float(z) for z in img.header.get_zooms()[:3]), img.affine


def surface(mask) -> np.ndarray:
    """Surface voxels: the mask minus its 6-connected erosion (border = background)."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask)


def _directed_distances(src_surface, dst_surface, spacing) -> np.ndarray:
    """Distance (mm) from every src surface voxel to the nearest dst surface voxel."""
    dist = ndimage.distance_transform_edt(~dst_surface, sampling=spacing)
    return dist[src_surface]


def hd95(pred, ref, spacing=(1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (BraTS empty-set rules)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return HD95_EMPTY
    # Cropping is safe: the margin keeps the erosion's border behaviour and
    # distances between surface voxels do not depend on the box.
    pred, ref = crop_to_union(pred, ref)
    s_pred, s_ref = surface(pred), surface(ref)
    spacing = tuple(float(s) for s in spacing)
    d_pr = _directed_distances(s_pred, s_ref, spacing)
    d_rp = _directed_distances(s_ref, s_pred, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def sensitivity_specificity(pred, ref) -> tuple[float, float]:
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    tp = int(np.logical_and(pred, ref).sum())
    fn = int(ref.sum()) - tp
    fp = int(pred.sum()) - tp
    tn = pred.size - tp - fn - fp
    sens = tp / (tp + fn) if (tp + fn) else 1.0
    spec = tn / (tn + fp) if (tn + fp) else 1.0
    return float(sens), float(spec)


def _check_metric_sets(metric_sets) -> tuple[str, ...]:
    unknown = sorted(set(metric_sets) - set(METRIC_SETS))
    if unknown or not metric_sets:
        raise ValueError(f"metric sets {unknown or '(none)'}: choose from {list(METRIC_SETS)}")
    return tuple(metric_sets)


def score_regions(pred_regions, ref_regions, spacing=(1.0, 1.0, 1.0),
                  metric_sets=("legacy",)) -> dict:
    """Score boolean region stacks [3, X, Y, Z] (WT, TC, ET) against each other.

    metric_sets: any of "legacy" (dice, hd95, sensitivity, specificity) and
    "lesionwise" (lesionwise.score_lesionwise: lw_* metrics, lesion counts and
    the per-lesion list under "lesions").
    """
    metric_sets = _check_metric_sets(metric_sets)
    out = {region: {} for region in lab.REGIONS}
    if "legacy" in metric_sets:
        for i, region in enumerate(lab.REGIONS):
            p, r = pred_regions[i], ref_regions[i]
            sens, spec = sensitivity_specificity(p, r)
            out[region].update({"dice": dice(p, r), "hd95": hd95(p, r, spacing),
                                "sensitivity": sens, "specificity": spec})
    if "lesionwise" in metric_sets:
        from .lesionwise import score_lesionwise  # panoptica: only when asked for

        for region, values in score_lesionwise(pred_regions, ref_regions, spacing).items():
            out[region].update(values)
    return out


def score(pred, ref, labels="brats2021", spacing=(1.0, 1.0, 1.0), ref_labels=None,
          metric_sets=("legacy",)) -> dict:
    """BraTS metrics per region.

    pred, ref: label arrays [X, Y, Z] or NIfTI paths. With paths, the spacing
    comes from the reference header (and the two grids must agree).
    labels: convention of `pred` (and of `ref` unless `ref_labels` is given).
    Returns {"WT": {"dice", "hd95", "sensitivity", "specificity"}, "TC": ..., "ET": ...},
    plus the lesion-wise metrics when `metric_sets` holds "lesionwise".
    """
    ref_labels = labels if ref_labels is None else ref_labels
    ref_path = None
    if isinstance(pred, (str, Path)):
        pred_path = pred
        pred, pred_spacing, pred_affine = load_label_map(pred, "prediction")
    else:
        pred_path, pred_spacing, pred_affine = None, None, None
    if isinstance(ref, (str, Path)):
        ref_path = ref
        ref, spacing, ref_affine = load_label_map(ref, "reference")
        if pred_affine is not None and not np.allclose(pred_affine, ref_affine, atol=1e-3):
            raise InputError("prediction and reference are on different grids (affines differ)",
                             path=pred_path)
    elif pred_spacing is not None:
        spacing = pred_spacing
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference {ref.shape}",
                         path=pred_path if pred_path is not None else ref_path)
    for arr, conv, what in ((pred, labels, "prediction"), (ref, ref_labels, "reference")):
        bad = lab.unexpected_values(arr, conv)
        if bad:
            raise InputError(f"{what} holds label values {bad} outside convention {conv!r}",
                             path=pred_path if what == "prediction" else ref_path)
    return score_regions(lab.labels_to_regions(pred, labels),
                         lab.labels_to_regions(ref, ref_labels), spacing, metric_sets)


def score_files(pred_path, ref_path, labels="brats2021", pred_labels=None, json_out=None,
                metric_sets=("legacy",)) -> dict:
    """Score a predicted label file against a reference file.

    labels: convention of the reference; pred_labels: convention of the
    prediction (default: the same). Writes `json_out` atomically if given.
    """
    result = score(pred_path, ref_path, labels=pred_labels or labels, ref_labels=labels,
                   metric_sets=metric_sets)
    if json_out is not None:
        write_json(json_out, result)
    return result


def _cell(value) -> str:
    return f"{value:>13d}" if isinstance(value, int) else f"{value:>13.4f}"


def format_table(result: dict) -> str:
    """Fixed-width text tables of a score() result, one per metric set present."""
    blocks = []
    for names in (METRICS, LESIONWISE_METRICS):
        shown = [m for m in names if m in result[lab.REGIONS[0]]]
        if not shown:
            continue
        lines = [f"{'region':<7}" + "".join(f"{m:>13}" for m in shown)]
        for region in lab.REGIONS:
            lines.append(f"{region:<7}" + "".join(_cell(result[region][m]) for m in shown))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def score_cli(pred, gt, labels="brats2021", json_out=None, pred_labels=None,
              lesionwise=False) -> dict:
    """Back end of ``btpipe score``: print a table, optionally write JSON.

    labels "auto" takes the convention that the reference's file name settles
    (btpipe.ingest.discover.convention_for_case)."""
    if labels == lab.AUTO:
        from ..ingest.discover import detect_convention

        labels = detect_convention([gt])
    metric_sets = ("legacy", "lesionwise") if lesionwise else ("legacy",)
    result = score_files(pred, gt, labels=labels, pred_labels=pred_labels, json_out=json_out,
                         metric_sets=metric_sets)
    print(format_table(result))
    return result


def cohort_tables(metric_json_paths_by_subject):
    """Per-subject metrics.json files -> (long table, summary table).

    metric_json_paths_by_subject: {subject: path to a score() JSON}; every
    metric of ALL_METRICS that a region holds becomes rows (per-lesion lists
    stay in the JSON files).
    Returns seg_metrics [subject, region, metric, value] and seg_summary
    [region, metric, statistic (mean/median/std), value]; null values
    (written for NaN) are ignored by the statistics.
    """
    import pandas as pd

    rows = []
    for subject in sorted(metric_json_paths_by_subject):
        path = metric_json_paths_by_subject[subject]
        try:
            result = read_json(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read metrics: {exc}", subject=subject, path=path) from exc
        for region in lab.REGIONS:
            if region not in result:
                raise InputError(f"metrics lack region {region}", subject=subject, path=path)
            for metric in (m for m in ALL_METRICS if m in result[region]):
                value = result[region][metric]
                rows.append({"subject": str(subject), "region": region, "metric": metric,
                             "value": float("nan") if value is None else float(value)})
    long = pd.DataFrame(rows, columns=["subject", "region", "metric", "value"])
    long["value"] = long["value"].astype(float)
    summary_rows = []
    for (region, metric), grp in long.groupby(["region", "metric"], sort=False):
        values = grp["value"].dropna()
        stats = {"mean": values.mean(), "median": values.median(),
                 "std": values.std(ddof=1) if len(values) > 1 else float("nan")}
        for stat, value in stats.items():
            summary_rows.append({"region": region, "metric": metric, "statistic": stat,
                                 "value": float(value)})
    summary = pd.DataFrame(summary_rows, columns=["region", "metric", "statistic", "value"])
    return long, summary
