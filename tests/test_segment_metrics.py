"""Segmentation scoring, label/region conversion, ET post-processing, folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btpipe import labels as lab
from btpipe.errors import ConfigError, InputError
from btpipe.io import read_json, save_array_nifti
from btpipe.segment import folds, metrics, postprocess

torch.set_num_threads(min(2, torch.get_num_threads()))

ALGORITHMS = ["hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20"]


def _segdir(testdata):
    return testdata / "mri" / "tcga-fg-6692" / "reference" / "segmentations"


def _load(path):
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


# --- labels <-> regions -------------------------------------------------------------------------

@pytest.mark.parametrize("convention", ["brats2021", "brats2023"])
def test_label_region_round_trip(convention):
    rng = np.random.default_rng(1)
    values = [0] + sorted(lab.resolve_convention(convention))
    label_map = rng.choice(values, size=(9, 8, 7)).astype(np.uint8)
    regions = lab.labels_to_regions(label_map, convention)
    assert regions.shape == (3, 9, 8, 7)
    # Regions are nested by construction: ET in TC in WT.
    assert not (regions[2] & ~regions[1]).any() and not (regions[1] & ~regions[0]).any()
    np.testing.assert_array_equal(lab.regions_to_labels(regions, convention), label_map)


def test_brats2015_non_enhancing_counts_in_core_and_whole():
    label_map = np.array([0, 1, 2, 3, 4]).reshape(5, 1, 1)
    wt, tc, et = lab.labels_to_regions(label_map, "brats2015")
    assert wt.ravel().tolist() == [False, True, True, True, True]
    assert tc.ravel().tolist() == [False, True, False, True, True]
    assert et.ravel().tolist() == [False, False, False, False, True]
    # Scored against itself in brats2021 terms, label 3 lands in TC (as NCR).
    as2021 = lab.convert_labels(label_map, "brats2015", "brats2021")
    assert as2021.ravel().tolist() == [0, 1, 2, 1, 4]
    result = metrics.score(as2021, label_map, labels="brats2021", ref_labels="brats2015")
    assert all(result[r]["dice"] == 1.0 for r in lab.REGIONS)


# --- ET small-volume rule -----------------------------------------------------------------------

def test_small_et_becomes_necrosis_and_large_et_stays():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[2:8, 2:8, 2:8] = 2
    seg[4:6, 4:6, 4:6] = 1
    seg[4, 4, 4] = 4                                     # 1 voxel of ET = 8 mm3 at 2 mm
    out, changed = postprocess.relabel_small_et(seg, "brats2021", min_volume_mm3=10, voxel_mm3=8.0)
    assert changed and (out == 4).sum() == 0 and out[4, 4, 4] == 1
    assert (out == 2).sum() == (seg == 2).sum()          # edema untouched
    assert seg[4, 4, 4] == 4                             # input not modified
    kept, changed = postprocess.relabel_small_et(seg, "brats2021", min_volume_mm3=8, voxel_mm3=8.0)
    assert not changed and kept[4, 4, 4] == 4
    seg23 = lab.convert_labels(seg, "brats2021", "brats2023")
    out23, changed = postprocess.relabel_small_et(seg23, "brats2023", 100, 1.0)
    assert changed and (out23 == 3).sum() == 0 and out23[4, 4, 4] == 1


def test_propose_et_threshold_prefers_removing_false_enhancement(tmp_path):
    aff = np.eye(4)
    preds, refs = [], []
    for i, (pred_et, ref_et) in enumerate([(3, 0), (2, 0), (27, 27)]):
        ref = np.zeros((12, 12, 12), np.uint8)
        ref[2:10, 2:10, 2:10] = 2
        pred = ref.copy()
        if ref_et:
            ref[4:7, 4:7, 4:7] = 4
            pred[4:7, 4:7, 4:7] = 4
        pred.reshape(-1)[np.flatnonzero(ref.reshape(-1) == 2)[:pred_et] if not ref_et else []] = 4
        save_array_nifti(tmp_path / f"p{i}.nii.gz", pred, aff, dtype=np.uint8)
        save_array_nifti(tmp_path / f"r{i}.nii.gz", ref, aff, dtype=np.uint8)
        preds.append(tmp_path / f"p{i}.nii.gz")
        refs.append(tmp_path / f"r{i}.nii.gz")
    result = postprocess.propose_et_threshold(preds, refs, "brats2021", candidates=[0, 5, 10, 50])
    # 5 mm3 removes both false ET cases (3 and 2 voxels) and keeps the true 27-voxel ET;
    # 50 would also delete the true one, and 10 ties with 5 (smaller wins).
    assert result["threshold"] == 5
    assert result["mean_et_dice"][5.0] == pytest.approx(1.0)
    assert result["mean_et_dice"][0.0] == pytest.approx(1 / 3)
    assert result["mean_et_dice"][50.0] == pytest.approx(2 / 3)


# --- metrics ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_metrics_match_monai_on_real_segmentations(testdata):
    from monai.metrics import compute_dice, compute_hausdorff_distance

    segdir = _segdir(testdata)
    ref = _load(segdir / "fusion_simple.nii.gz")
    preds = {name: _load(segdir / f"{name}.nii.gz") for name in ALGORITHMS}
    # Crop everything to the tumour box + margin: Dice and surface distances do not
    # depend on empty space far away (both implementations crop internally too).
    union = np.any([p > 0 for p in preds.values()], axis=0) | (ref > 0)
    lo, hi = np.argwhere(union).min(0) - 3, np.argwhere(union).max(0) + 4
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ref_regions = torch.from_numpy(lab.labels_to_regions(ref[box])[None]).float()
    hd_values = []
    for name, pred in preds.items():
        ours = metrics.score(pred[box], ref[box])
        pred_regions = torch.from_numpy(lab.labels_to_regions(pred[box])[None]).float()
        monai_dice = compute_dice(pred_regions, ref_regions, include_background=True)[0]
        monai_hd = compute_hausdorff_distance(pred_regions, ref_regions, include_background=True,
                                              percentile=95, spacing=(1.0, 1.0, 1.0))[0]
        for i, region in enumerate(lab.REGIONS):
            assert ours[region]["dice"] == pytest.approx(float(monai_dice[i]), abs=1e-6)
            # Same definition as MONAI (edges by erosion, max of directed 95th percentiles).
            assert ours[region]["hd95"] == pytest.approx(float(monai_hd[i]), abs=1e-4)
            hd_values.append(ours[region]["hd95"])
        assert ours["WT"]["dice"] > 0.85      # the five algorithms agree with their fusion
    assert len(set(np.round(hd_values, 3))) > 3   # a real spread of distances was compared
    # From the files (spacing from the header, whole grid for specificity).
    from_files = metrics.score(segdir / "isen-20.nii.gz", segdir / "fusion_simple.nii.gz")
    cropped = metrics.score(preds["isen-20"][box], ref[box])
    for region in lab.REGIONS:
        assert from_files[region]["dice"] == cropped[region]["dice"]
        assert from_files[region]["hd95"] == cropped[region]["hd95"]
        assert from_files[region]["specificity"] > cropped[region]["specificity"] > 0.9


def test_hd95_uses_spacing_and_sensitivity_specificity_count_voxels():
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    pred = np.roll(ref, 2, axis=0)
    assert metrics.hd95(pred, ref, (1, 1, 1)) == pytest.approx(2.0)
    assert metrics.hd95(pred, ref, (3, 1, 1)) == pytest.approx(6.0)
    sens, spec = metrics.sensitivity_specificity(pred, ref)
    assert sens == pytest.approx(800 / 1000)
    assert spec == pytest.approx((8000 - 1000 - 200) / (8000 - 1000))


def test_empty_set_rules():
    empty = np.zeros((12, 12, 12), np.uint8)
    some = empty.copy()
    some[3:6, 3:6, 3:6] = 2                     # edema only: WT present, TC and ET empty
    both_empty = metrics.score(empty, empty)
    assert all(both_empty[r]["dice"] == 1.0 and both_empty[r]["hd95"] == 0.0 for r in lab.REGIONS)
    one_empty = metrics.score(some, empty)
    assert one_empty["WT"]["dice"] == 0.0 and one_empty["WT"]["hd95"] == metrics.HD95_EMPTY
    assert one_empty["ET"]["dice"] == 1.0 and one_empty["ET"]["hd95"] == 0.0
    other_way = metrics.score(empty, some)
    assert other_way["WT"]["dice"] == 0.0 and other_way["WT"]["hd95"] == 373.13
    assert other_way["WT"]["sensitivity"] == 0.0


def test_score_files_cross_convention_json_and_cli(tmp_path, capsys):
    ref15 = np.zeros((10, 10, 10), np.uint8)
    ref15[2:8, 2:8, 2:8] = 2
    ref15[3:6, 3:6, 3:6] = 3                    # non-enhancing core
    ref15[4, 4, 4] = 4
    pred23 = lab.convert_labels(ref15, "brats2015", "brats2023")
    save_array_nifti(tmp_path / "ref.nii.gz", ref15, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=np.uint8)
    save_array_nifti(tmp_path / "pred.nii.gz", pred23, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=np.uint8)
    out = metrics.score_cli(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", labels="brats2015",
                            pred_labels="brats2023", json_out=tmp_path / "m.json")
    assert out["TC"]["dice"] == 1.0 and out["ET"]["dice"] == 1.0
    assert read_json(tmp_path / "m.json")["WT"]["hd95"] == 0.0
    assert "WT" in capsys.readouterr().out
    # Labels outside the convention are an input error naming the file.
    bad = pred23.copy()
    bad[0, 0, 0] = 5
    save_array_nifti(tmp_path / "bad.nii.gz", bad, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=np.uint8)
    with pytest.raises(InputError, match="bad.nii.gz"):
        metrics.score_files(tmp_path / "bad.nii.gz", tmp_path / "ref.nii.gz", labels="brats2015")
    # HD95 in mm uses the header spacing: shift the prediction one voxel (2 mm).
    save_array_nifti(tmp_path / "shift.nii.gz", np.roll(ref15, 1, axis=0), np.diag([2.0, 2.0, 2.0, 1.0]),
                     dtype=np.uint8)
    shifted = metrics.score_files(tmp_path / "shift.nii.gz", tmp_path / "ref.nii.gz", labels="brats2015")
    assert shifted["WT"]["hd95"] == pytest.approx(2.0)


def test_cohort_tables_long_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for s in ["a", "b", "c"]:
        result = {r: {m: float(rng.uniform()) for m in metrics.METRICS} for r in lab.REGIONS}
        result["ET"]["hd95"] = float("nan") if s == "c" else result["ET"]["hd95"]
        from btpipe.io import write_json
        write_json(tmp_path / f"{s}.json", result)
        paths[s] = tmp_path / f"{s}.json"
    long, summary = metrics.cohort_tables(paths)
    assert list(long.columns) == ["subject", "region", "metric", "value"]
    assert len(long) == 3 * 3 * 4
    assert list(summary.columns) == ["region", "metric", "statistic", "value"]
    assert set(summary["statistic"]) == {"mean", "median", "std"}
    wt_dice = long.query("region == 'WT' and metric == 'dice'")["value"]
    got = summary.query("region == 'WT' and metric == 'dice' and statistic == 'mean'")["value"].item()
    assert got == pytest.approx(wt_dice.mean())
    et_hd_mean = summary.query("region == 'ET' and metric == 'hd95' and statistic == 'mean'")["value"].item()
    assert et_hd_mean == pytest.approx(long.query("region == 'ET' and metric == 'hd95'")["value"].dropna().mean())


# --- folds --------------------------------------------------------------------------------------

def test_folds_stable_when_subjects_are_added(tmp_path):
    subjects = [f"sub{i:03d}" for i in range(40)]
    before = folds.assign_folds(subjects, 5, seed=3)
    assert set(before.values()) == set(range(5))
    after = folds.assign_folds(subjects + ["new1", "new2", "zz"], 5, seed=3)
    assert all(after[s] == before[s] for s in subjects)
    assert folds.assign_folds(list(reversed(subjects)), 5, seed=3) == before   # order-free
    assert folds.assign_folds(subjects, 5, seed=4) != before                    # seed matters
    folds.write_folds(tmp_path / "folds.json", after, 5, seed=3)
    written = read_json(tmp_path / "folds.json")
    assert written["folds"] == after and sum(map(len, written["members"])) == 43


def test_folds_never_empty_in_small_cohorts():
    for n in range(3, 12):
        for seed in range(20):
            mapping = folds.assign_folds([f"s{i}" for i in range(n)], 3, seed=seed)
            assert set(mapping.values()) == {0, 1, 2}, (n, seed)


def test_small_whole_tumour_islands_are_dropped_with_their_core():
    from btpipe.segment.postprocess import drop_small_components

    regions = np.zeros((3, 30, 30, 30), bool)
    regions[0, 2:14, 2:14, 2:14] = True          # main lesion, 1728 voxels
    regions[1:, 5:9, 5:9, 5:9] = True            # its core and enhancing part
    regions[0, 20:28, 20:28, 20:28] = True       # second lesion, 512 voxels (30 %)
    regions[0, 25:27, 2:4, 2:4] = True           # island, 8 voxels
    regions[1:, 25, 2, 2] = True                 # with a core voxel
    kept, dropped = drop_small_components(regions, 0.1)
    assert dropped == 1
    assert not kept[:, 25:27, 2:4, 2:4].any()
    assert kept[0].sum() == 1728 + 512 and kept[1].sum() == 64 and kept[2].sum() == 64
    same, none = drop_small_components(regions, 0.0)
    assert none == 0 and np.array_equal(same, regions)
    _, dropped_both = drop_small_components(regions, 0.5)   # the second lesion goes too
    assert dropped_both == 2


def test_fold_models_train_monitor_and_segment_the_right_subjects():
    """Each fold model trains on the other folds and is scored on its own; labelled
    subjects are segmented by the model that never saw them, unlabelled ones by the
    fold ensemble (or the final model)."""
    from btpipe.segment import folds

    mapping = folds.assign_folds([f"s{i}" for i in range(9)], 3, seed=0)
    names = folds.fold_model_names(mapping)
    assert names == ["fold0", "fold1", "fold2", "final"]
    assert folds.fold_model_names(mapping, final=False) == names[:-1]   # final_model: false
    for name in names[:-1]:
        train, monitor = folds.training_subjects(mapping, name), folds.monitoring_subjects(mapping, name)
        assert monitor and not set(train) & set(monitor)
        assert sorted(train + monitor) == sorted(mapping)
    assert folds.training_subjects(mapping, "final") == sorted(mapping)
    assert folds.monitoring_subjects(mapping, "final") == []
    for subject, fold in mapping.items():
        (model,) = folds.segmenting_models(subject, mapping)
        assert subject not in folds.training_subjects(mapping, model) and model == f"fold{fold}"
    assert folds.segmenting_models("new", mapping) == ["fold0", "fold1", "fold2"]
    assert folds.segmenting_models("new", mapping, "final") == ["final"]
    with pytest.raises(ConfigError):
        folds.segmenting_models("new", mapping, "vote")
