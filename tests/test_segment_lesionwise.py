"""Lesion-wise scoring: equal to the official BraTS evaluation package on real
label maps, and hand-built cases whose values follow from the definitions."""

from __future__ import annotations

import json
import math
import re

import nibabel as nib
import numpy as np
import pytest

from btpipe import cli
from btpipe import labels as lab
from btpipe.io import save_array_nifti, write_json
from btpipe.segment import metrics
from btpipe.segment.lesionwise import brats_evaluator, region_codes

# panoptica's whole-region NSD (not a lesion-wise value) warns about its 0.5 mm default.
OFFICIAL_NSD_WARNING = "ignore:The threshold is set to 0.5"
ALGORITHMS = ["hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20"]
LW = ("lesionwise",)
# btpipe metric -> key of the official package's result (panoptica's names).
OFFICIAL_KEYS = {"lw_dice": "sq_dsc", "lw_hd95": "sq_hd95", "lw_nsd": "sq_nsd",
                 "lesions_tp": "tp", "lesions_fp": "fp", "lesions_fn": "fn"}
LESION_KEYS = {"dice": "sq_dsc", "hd95": "sq_hd95", "nsd": "sq_nsd", "voxels": "voxel_count",
               "volume_mm3": "volume"}


def _segdir(testdata):
    return testdata / "mri" / "tcga-fg-6692" / "reference" / "segmentations"


def _official():
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    return Panoptica_Evaluator.load_from_config(str(config_path("gli"))), config_path("gli")


def _save_like(src, data, dest):
    img = nib.load(str(src))
    nib.save(nib.Nifti1Image(data.astype(np.uint8), img.affine, img.header), str(dest))
    return dest


def _as_brats2023(src, dest):
    """A brats2021 label file (ET = 4) rewritten with ET = 3, the official glioma labels."""
    data = np.asarray(nib.load(str(src)).dataobj).astype(np.uint8)
    return _save_like(src, np.where(data == 4, 3, data), dest)


def _assert_equal_to_official(ours: dict, official: dict):
    for region in lab.REGIONS:
        got, want = ours[region], official[region.lower()]
        for name, key in OFFICIAL_KEYS.items():
            assert got[name] == pytest.approx(want[key], abs=1e-6), (region, name)
        # Lesion numbering follows the array axis order, which differs between readers:
        # compare the rows sorted by (detected, size, Dice).
        rows = sorted(want["reference_instances"],
                      key=lambda r: (-r["is_matched"], r["voxel_count"], r.get("sq_dsc", 0)))
        lesions = sorted(got["lesions"],
                         key=lambda l: (-l["detected"], l["voxels"], l["dice"] or 0))
        assert len(lesions) == len(rows) == want["tp"] + want["fn"]
        for lesion, row in zip(lesions, rows):
            assert lesion["detected"] == bool(row["is_matched"])
            for name, key in LESION_KEYS.items():
                if key in row:
                    assert lesion[name] == pytest.approx(row[key], abs=1e-6), (region, name)
                else:
                    assert lesion[name] is None


# --- the official configuration ---------------------------------------------------------------

def _without_groups(yaml_text: str) -> str:
    """A saved panoptica config minus its label groups (the only per-challenge part)."""
    return re.sub(r"^segmentation_class_groups:.*?(?=^\S)", "", yaml_text, flags=re.S | re.M)


def test_evaluator_settings_are_the_official_ones(tmp_path):
    official, _ = _official()
    official.save_to_config(tmp_path / "official.yaml")
    brats_evaluator().save_to_config(tmp_path / "btpipe.yaml")
    ours, theirs = ((tmp_path / n).read_text() for n in ("btpipe.yaml", "official.yaml"))
    assert "MaxBipartiteMatching" in ours and "matching_threshold: 1e-06" in ours
    assert _without_groups(ours) == _without_groups(theirs)


def test_region_codes_reject_regions_that_are_not_nested():
    regions = np.zeros((3, 4, 4, 4), bool)
    regions[0, 1, 1, 1] = regions[1, 1, 1, 1] = regions[2, 1, 1, 1] = True
    assert region_codes(regions)[1, 1, 1] == 3
    regions[2, 2, 2, 2] = True                      # ET outside TC
    with pytest.raises(ValueError, match="nested"):
        region_codes(regions)


@pytest.mark.filterwarnings(OFFICIAL_NSD_WARNING)
def test_cropping_before_panoptica_changes_no_value():
    """Lesions at the image border and inside: btpipe's crop to the tumour box gives
    what panoptica gives on the full arrays."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    maps = [np.where(ndimage.gaussian_filter(rng.random(SHAPE), 2) > 0.53, 2, 0).astype(np.uint8)
            for _ in range(2)]
    maps[0][0:3, 0:4, 0:2] = 4                                    # touches three faces
    regions = [lab.labels_to_regions(m) for m in maps]
    ours = metrics.score_regions(*regions, spacing=(1.0, 1.0, 2.0), metric_sets=LW)
    full = brats_evaluator().evaluate(region_codes(regions[0]), region_codes(regions[1]),
                                      voxelspacing=(1.0, 1.0, 2.0))
    assert ours["WT"]["lesions_tp"] >= 2
    for region in lab.REGIONS:
        want = full[region.lower()]
        assert ours[region]["lesions_tp"] == want.tp and ours[region]["lesions_fn"] == want.fn
        for name, key in (("lw_dice", "sq_dsc"), ("lw_hd95", "sq_hd95"), ("lw_nsd", "sq_nsd")):
            value = getattr(want, key)
            value = metrics.HD95_EMPTY if math.isinf(value) else value   # btpipe's finite maximum
            assert ours[region][name] == pytest.approx(value, abs=1e-12, nan_ok=True)


# --- equal to brats-evaluation on real label maps ---------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings(OFFICIAL_NSD_WARNING)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_real_segmentations_equal_official_package(testdata, tmp_path, algorithm):
    """Five BraTS 2020 algorithms against their fusion (labels 0, 1, 2, 4): btpipe on the
    files as they are (brats2021), the official package with its glioma config on the
    same maps relabelled to its values (ET 4 -> 3)."""
    from brats_evaluation import evaluate_single_exam

    seg = _segdir(testdata)
    pred, ref = seg / f"{algorithm}.nii.gz", seg / "fusion_simple.nii.gz"
    official = evaluate_single_exam(
        str(_as_brats2023(pred, tmp_path / "pred.nii.gz")),
        str(_as_brats2023(ref, tmp_path / "ref.nii.gz")), algorithm, _official()[0])
    assert "error" not in official
    ours = metrics.score_files(pred, ref, labels="brats2021", metric_sets=LW)
    _assert_equal_to_official(ours, official)
    # The real maps exercise matching: several lesions, some missed, some spurious.
    assert ours["WT"]["lesions_tp"] >= 1 and ours["WT"]["lesions_fn"] + ours["WT"]["lesions_fp"] >= 1


@pytest.mark.slow
@pytest.mark.filterwarnings(OFFICIAL_NSD_WARNING)
def test_brats2024_resection_cavity_equal_official_package_on_the_same_files(testdata, tmp_path):
    """Post-treatment labels (4 = resection cavity, in no region): both tools read the
    very same files; the cavity changes no lesion-wise score."""
    from brats_evaluation import evaluate_single_exam

    seg = _segdir(testdata)
    # Cavities beside the tumour (which spans voxels 57-115): overlapping, not identical.
    cavities = {"ref": (slice(120, 135), slice(120, 135), slice(60, 70)),
                "pred": (slice(122, 138), slice(118, 134), slice(62, 72))}
    maps = {}
    for name, src in (("pred", seg / "isen-20.nii.gz"), ("ref", seg / "fusion_simple.nii.gz")):
        data = np.asarray(nib.load(str(src)).dataobj).astype(np.uint8)
        data = np.where(data == 4, 3, data)
        assert not data[cavities[name]].any()
        data[cavities[name]] = 4
        maps[name] = _save_like(src, data, tmp_path / f"{name}.nii.gz")
    official = evaluate_single_exam(str(maps["pred"]), str(maps["ref"]), "case", _official()[0])
    assert official["rc"]["tp"] == 1                # the cavity exists for the official config
    ours = metrics.score_files(maps["pred"], maps["ref"], labels="brats2024", metric_sets=LW)
    _assert_equal_to_official(ours, official)
    plain = metrics.score_files(seg / "isen-20.nii.gz", seg / "fusion_simple.nii.gz",
                                labels="brats2021", metric_sets=LW)
    assert all(ours[r]["lw_dice"] == plain[r]["lw_dice"] for r in lab.REGIONS)


# --- hand-built cases -------------------------------------------------------------------------

SHAPE = (24, 24, 24)


def _cube(label_map, corner, size, value=2):
    x, y, z = corner
    sx, sy, sz = (size,) * 3 if np.isscalar(size) else size
    label_map[x:x + sx, y:y + sy, z:z + sz] = value
    return label_map


def _lw(pred, ref, region="WT", spacing=(1.0, 1.0, 1.0), labels="brats2021"):
    return metrics.score(pred, ref, labels=labels, spacing=spacing, metric_sets=LW)[region]


def test_missed_lesion_is_a_false_negative_not_a_lower_mean():
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3), (14, 14, 14), 2)
    pred = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3)             # only the first one
    wt = _lw(pred, ref)
    assert (wt["lesions_tp"], wt["lesions_fp"], wt["lesions_fn"]) == (1, 0, 1)
    # Means run over matched lesions only: the found lesion is perfect.
    assert (wt["lw_dice"], wt["lw_hd95"], wt["lw_nsd"]) == (1.0, 0.0, 1.0)
    assert [(l["voxels"], l["detected"]) for l in wt["lesions"]] == [(27, True), (8, False)]
    assert wt["lesions"][1]["dice"] is None
    # The whole-region Dice does see the miss: 2 * 27 / (27 + 35).
    assert metrics.score(pred, ref)["WT"]["dice"] == pytest.approx(54 / 62)


def test_spurious_lesion_is_a_false_positive():
    ref = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3)
    pred = _cube(ref.copy(), (14, 14, 14), 2)
    wt = _lw(pred, ref)
    assert (wt["lesions_tp"], wt["lesions_fp"], wt["lesions_fn"]) == (1, 1, 0)
    assert wt["lw_dice"] == 1.0 and len(wt["lesions"]) == 1   # rows list reference lesions


def test_both_empty_is_undefined_and_written_as_null(tmp_path):
    empty = np.zeros(SHAPE, np.uint8)
    result = metrics.score(empty, empty, metric_sets=("legacy", "lesionwise"))
    for region in lab.REGIONS:
        got = result[region]
        assert all(math.isnan(got[m]) for m in ("lw_dice", "lw_hd95", "lw_nsd"))
        assert (got["lesions_tp"], got["lesions_fp"], got["lesions_fn"]) == (0, 0, 0)
        assert got["dice"] == 1.0                    # legacy rule unchanged
    write_json(tmp_path / "m.json", result)
    assert json.loads((tmp_path / "m.json").read_text())["WT"]["lw_dice"] is None


@pytest.mark.parametrize("empty_side", ["pred", "ref"])
def test_one_side_empty_scores_zero_and_the_brats_maximum(empty_side):
    some = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3), (14, 14, 14), 2)
    empty = np.zeros(SHAPE, np.uint8)
    pred, ref = (empty, some) if empty_side == "pred" else (some, empty)
    wt = _lw(pred, ref)
    assert (wt["lw_dice"], wt["lw_nsd"], wt["lw_hd95"]) == (0.0, 0.0, metrics.HD95_EMPTY)
    counts = (wt["lesions_tp"], wt["lesions_fp"], wt["lesions_fn"])
    assert counts == ((0, 0, 2) if empty_side == "pred" else (0, 2, 0))
    # Lesions on both sides that never overlap: no match, same rule.
    apart = _cube(np.zeros(SHAPE, np.uint8), (8, 8, 8), 3)
    wt = _lw(apart, some)
    assert (wt["lesions_tp"], wt["lesions_fp"], wt["lesions_fn"]) == (0, 1, 2)
    assert (wt["lw_dice"], wt["lw_hd95"]) == (0.0, metrics.HD95_EMPTY)


@pytest.mark.parametrize("second_corner", [(5, 2, 2), (5, 5, 5)], ids=["face", "corner"])
def test_touching_lesions_are_one_lesion(second_corner):
    """Components are 26-connected: cubes sharing a face, or only a corner voxel,
    make one reference lesion; a prediction of the first cube matches it."""
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3), second_corner, 3)
    pred = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3)
    wt = _lw(pred, ref)
    assert (wt["lesions_tp"], wt["lesions_fp"], wt["lesions_fn"]) == (1, 0, 0)
    assert wt["lesions"][0]["voxels"] == 54
    assert wt["lw_dice"] == pytest.approx(2 * 27 / (27 + 54))


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_partial_overlap_values_from_the_definitions(spacing):
    """Reference 3x3x3, prediction the same plus a 3x3x2 slab on top (3x3x5).
    Surfaces (voxels removed by a 6-connected erosion): reference 26 voxels,
    prediction 42. Reference surface -> prediction surface: 25 at 0, one (the
    reference's top centre, inside the prediction) at 1 voxel. Prediction
    surface -> reference surface: 25 at 0, 8 at 1, 9 at 2 voxels.
    Dice = 2*27/(27+45) = 0.75. HD95 = 95th percentile of the 68 pooled
    distances (50 x 0, 9 x 1, 9 x 2; linear interpolation at rank 63.65) = 2
    voxels. NSD at a 1-voxel tolerance = (26/26 + 33/42) / (26/26 + 42/42) = 25/28."""
    ref = _cube(np.zeros(SHAPE, np.uint8), (8, 8, 8), 3, value=4)
    pred = _cube(ref.copy(), (8, 8, 11), (3, 3, 2), value=4)
    for region in lab.REGIONS:                         # ET is in TC and WT
        got = _lw(pred, ref, region, spacing=(spacing,) * 3)
        assert got["lw_dice"] == pytest.approx(0.75)
        assert got["lw_hd95"] == pytest.approx(2 * spacing)
        assert got["lw_nsd"] == pytest.approx(25 / 28)  # tolerance = the voxel spacing
        assert got["lesions"][0]["volume_mm3"] == pytest.approx(27 * spacing ** 3)


def test_resection_cavity_is_in_no_region():
    ref = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3, value=3)     # ET (brats2024)
    pred = _cube(ref.copy(), (14, 14, 14), 3, value=4)                # + a cavity elsewhere
    for region in lab.REGIONS:
        got = _lw(pred, ref, region, labels="brats2024")
        assert (got["lesions_tp"], got["lesions_fp"], got["lesions_fn"]) == (1, 0, 0)
    assert metrics.score(pred, ref, labels="brats2024")["WT"]["dice"] == 1.0


# --- legacy unchanged, metric sets, tables, command line --------------------------------------

def test_legacy_metrics_unchanged_by_lesionwise(testdata):
    seg = _segdir(testdata)
    pred, ref = seg / "scan-20.nii.gz", seg / "fusion_simple.nii.gz"
    legacy = metrics.score_files(pred, ref)
    both = metrics.score_files(pred, ref, metric_sets=("legacy", "lesionwise"))
    for region in lab.REGIONS:
        assert set(legacy[region]) == set(metrics.METRICS)
        assert {m: both[region][m] for m in metrics.METRICS} == legacy[region]
    only_lw = metrics.score_files(pred, ref, metric_sets=LW)
    assert not set(metrics.METRICS) & set(only_lw["WT"])
    with pytest.raises(ValueError, match="metric sets"):
        metrics.score_files(pred, ref, metric_sets=("volumes",))


def test_cohort_tables_carry_lesionwise_metrics(tmp_path):
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3), (14, 14, 14), 2)
    paths = {}
    for subject, pred in (("a", ref), ("b", _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3)),
                          ("c", np.zeros(SHAPE, np.uint8))):
        paths[subject] = tmp_path / f"{subject}.json"
        write_json(paths[subject], metrics.score(pred, ref, metric_sets=("legacy", "lesionwise")))
    long, summary = metrics.cohort_tables(paths)
    assert set(long["metric"]) == set(metrics.ALL_METRICS)
    assert len(long) == 3 * 3 * len(metrics.ALL_METRICS)
    fn = long.query("region == 'WT' and metric == 'lesions_fn'").set_index("subject")["value"]
    assert fn.to_dict() == {"a": 0.0, "b": 1.0, "c": 2.0}
    # TC and ET are empty on both sides: lesion-wise Dice undefined, left out of the mean.
    et = long.query("region == 'ET' and metric == 'lw_dice'")["value"]
    assert et.isna().all()
    mean = summary.query("region == 'WT' and metric == 'lw_dice' and statistic == 'mean'")
    assert mean["value"].item() == pytest.approx((1.0 + 1.0 + 0.0) / 3)


def test_cli_score_lesionwise_json_and_auto_labels(tmp_path, capsys):
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3, value=3), (14, 14, 14), 2, value=1)
    pred = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), 3, value=3)
    ref[20, 20, 20] = 4                                       # a cavity voxel: brats2024 only
    gt = tmp_path / "BraTS-GLI-02060-100-seg.nii.gz"
    save_array_nifti(gt, ref, np.eye(4), dtype=np.uint8)
    save_array_nifti(tmp_path / "pred.nii.gz", pred, np.eye(4), dtype=np.uint8)
    out = tmp_path / "scores.json"
    assert cli.main(["score", "--pred", str(tmp_path / "pred.nii.gz"), "--gt", str(gt),
                     "--labels", "auto", "--lesionwise", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lw_dice" in printed and "lesions_fn" in printed and "specificity" in printed
    written = json.loads(out.read_text())
    assert (written["WT"]["lesions_tp"], written["WT"]["lesions_fn"]) == (1, 1)
    assert [l["detected"] for l in written["WT"]["lesions"]] == [True, False]
    assert written["ET"]["lw_dice"] == 1.0 and "dice" in written["ET"]
    # A convention that does not fit the file is an error naming it (3 is no brats2021 value).
    assert cli.main(["score", "--pred", str(tmp_path / "pred.nii.gz"), "--gt", str(gt),
                     "--labels", "brats2021"]) == 1
    assert "outside convention" in capsys.readouterr().err
