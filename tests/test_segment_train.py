"""Segmentation training (learning, resume, time budget, progress), inference outputs and
weight loading."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from btpipe import SEQUENCES
from btpipe.errors import ConfigError, InputError
from btpipe.labels import REGIONS
from btpipe.segment import infer, networks, train

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_subject(root, name, size=24, seed=0, spacing=1.0):
    """Synthetic 4-channel subject: a brain ellipsoid with a spherical tumour.

    WT (bright in T2/FLAIR) contains TC (dark in T1) whose outer shell is ET
    (bright in T1ce); labels in brats2021 (1 NCR, 2 ED, 4 ET). Returns an item.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).astype(np.float32)
    centre = np.full((3, 1, 1, 1), size / 2.0)
    radii = np.array([0.44, 0.41, 0.38]).reshape(3, 1, 1, 1) * size
    brain = (((grid - centre) / radii) ** 2).sum(0) <= 1
    tumour_centre = rng.uniform(0.38 * size, 0.62 * size, 3).reshape(3, 1, 1, 1)
    r = np.sqrt(((grid - tumour_centre) ** 2).sum(0))
    r_wt, r_tc = rng.uniform(0.24, 0.3) * size, rng.uniform(0.12, 0.16) * size
    wt, tc = (r <= r_wt) & brain, (r <= r_tc) & brain
    et = tc & (r > r_tc - 1.5)
    label = np.zeros(brain.shape, np.uint8)
    label[wt], label[tc], label[et] = 2, 1, 4
    base = brain.astype(np.float32)
    channels = {"t1": base - 0.8 * tc, "t1ce": base + 2.0 * et, "t2": base + 1.0 * wt,
                "flair": base + 1.5 * wt}
    affine = np.diag([spacing, spacing, spacing, 1.0])
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seq in SEQUENCES:
        noisy = (channels[seq] + rng.normal(0, 0.25, brain.shape)) * brain
        nib.save(nib.Nifti1Image(noisy.astype(np.float32), affine), out / f"{seq}.nii.gz")
        paths.append(str(out / f"{seq}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), out / "seg.nii.gz")
    return {"subject": name, "image": paths, "label": str(out / "seg.nii.gz")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return [make_subject(root, f"s{i}", seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    params = {"init_filters": 8, "roi_size": [24, 24, 24], "batch_size": 2, "max_steps": 24,
              "val_every": 4, "learning_rate": 0.01, "device": "cpu"}
    path = train.train_model(cohort[:3], cohort[3:], out, params, seed=0, work_dir=out / "work")
    return path, pd.read_csv(out / "training_log.csv")


@pytest.mark.slow
def test_training_learns_and_writes_model(trained, cohort):
    path, log = trained
    assert list(log.columns) == train.LOG_COLUMNS and log["step"].tolist() == list(range(1, 25))
    losses = log["train_loss"].to_numpy()
    assert losses[-4:].mean() < losses[:4].mean() - 0.1
    val = log.dropna(subset=["val_dice_mean"])
    assert val["step"].tolist() == [4, 8, 12, 16, 20, 24]
    assert val["val_dice_mean"].iloc[-2:].max() > val["val_dice_mean"].iloc[0] + 0.03
    assert val["val_dice_WT"].iloc[-1] > 0.5
    assert (np.diff(log["lr"]) < 0).all()                       # poly decay
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["channel_order"] == list(SEQUENCES) and ckpt["region_order"] == list(REGIONS)
    assert ckpt["trained_on"] == ["s0", "s1", "s2"] and ckpt["roi_size"] == [24, 24, 24]
    for key in ("monai_version", "torch_version", "labels", "seed", "network_params", "in_channels"):
        assert key in ckpt
    assert not list((path.parent / "work").glob("checkpoint_*.pt"))  # cleaned after success


def test_training_batches_are_a_pure_function_of_the_step(cohort, tmp_path):
    """Batches from the on-disk cache: the same step gives the same batch in any order
    and from a worker process; patch centres are tumour voxels about 2 times in 3."""
    from btpipe.segment import patches

    folders = patches.ensure_cached(cohort[:2], "brats2021", True, tmp_path / "cache")
    batches = patches.TrainingBatches(folders, [16, 16, 16], 2, 24, seed=3)
    first = [batches[i][:2] for i in range(24)]
    backwards = {i: batches[i][:2] for i in reversed(range(24))}
    from_workers = list(patches.batch_loader(batches, 1, num_workers=2))
    for i, (images, labels) in enumerate(first):
        assert images.shape == (2, 4, 16, 16, 16) and labels.shape == (2, 3, 16, 16, 16)
        assert torch.equal(images, backwards[i][0]) and torch.equal(labels, backwards[i][1])
        assert torch.equal(images, from_workers[i][0]) and torch.equal(labels, from_workers[i][1])
    assert not torch.equal(first[0][0], first[1][0])
    bits = np.load(folders[0] / "regions.npy")
    rng = np.random.default_rng(0)
    centres = [patches.pick_centre(bits, rng, 2 / 3) for _ in range(600)]
    on_tumour = np.mean([bits[c] & patches.WT_BIT > 0 for c in centres])
    assert 0.6 < on_tumour < 0.73
    assert all(bits[c] & patches.BRAIN_BIT for c in centres)


def test_cache_keeps_every_brain_and_tumour_voxel(cohort, tmp_path):
    """The cropped cache holds the whole normalised image and all tumour voxels; a
    changed input file gets a new cache folder and the stale one is removed."""
    import os

    from btpipe.segment import data as sdata, patches

    item = cohort[0]
    folder = patches.ensure_cached([item], "brats2021", True, tmp_path)[0]
    image, regions = patches.load_cached_subject(folder)
    full, ref = sdata.load_images(item["image"])
    full = sdata.normalize_channels(full)
    truth = sdata.load_label_regions(item["label"], "brats2021", ref) > 0.5
    assert image.dtype == torch.float32 and np.load(folder / "image.npy").dtype == np.float16
    assert np.isclose(image.abs().sum().item(), np.abs(full).sum(), rtol=1e-3)
    assert regions.sum() == truth.sum() and regions[0].sum() > 0
    stat = os.stat(item["label"])
    os.utime(item["label"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    renewed = patches.ensure_cached([item], "brats2021", True, tmp_path)[0]
    assert renewed != folder and renewed.exists() and not folder.exists()


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical(cohort, tmp_path):
    params = {"init_filters": 8, "roi_size": [16, 16, 16], "batch_size": 2, "max_steps": 6,
              "val_every": 2, "learning_rate": 0.01, "device": "cpu", "keep_checkpoints": True}
    reference = train.train_model(cohort[:2], [], tmp_path / "ref", params, seed=5, work_dir=tmp_path / "w_ref")

    class Interrupted(Exception):
        pass

    def stop_at_four(step):
        if step == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        train.train_model(cohort[:2], [], tmp_path / "run", params, seed=5, work_dir=tmp_path / "w_run",
                          on_checkpoint=stop_at_four)
    assert not (tmp_path / "run" / "model.pt").exists()        # nothing half-written in the output
    assert (tmp_path / "w_run" / "checkpoint_step0000004.pt").exists()
    seen = []
    resumed = train.train_model(cohort[:2], [], tmp_path / "run", params, seed=5, work_dir=tmp_path / "w_run",
                                on_checkpoint=seen.append)
    assert seen == [6]                                           # it continued, not restarted
    a = torch.load(reference, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = pd.read_csv(tmp_path / "run" / "training_log.csv")
    ref_log = pd.read_csv(tmp_path / "ref" / "training_log.csv")
    assert log["step"].tolist() == list(range(1, 7))
    np.testing.assert_array_equal(log["train_loss"], ref_log["train_loss"])
    # A checkpoint from another run (different seed) is ignored, not resumed.
    seen.clear()
    other = train.train_model(cohort[:2], [], tmp_path / "other", params, seed=6, work_dir=tmp_path / "w_run",
                              on_checkpoint=seen.append)
    assert seen == [2, 4, 6]
    c = torch.load(other, weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_segment_subject_writes_aligned_outputs(trained, cohort, tmp_path):
    path, _ = trained
    item = cohort[3]
    result = infer.segment_subject([path], item["image"], tmp_path / "one",
                                   {"device": "cpu", "tta": "none"}, labels="brats2021", subject="s3")
    seg_img = nib.load(result["seg"])
    ref_img = nib.load(item["image"][0])
    np.testing.assert_allclose(seg_img.affine, ref_img.affine)
    assert seg_img.get_data_dtype() == np.uint8 and seg_img.shape == ref_img.shape
    assert set(np.unique(np.asarray(seg_img.dataobj))) <= {0, 1, 2, 4}
    prob = np.asarray(nib.load(result["prob"]).dataobj)
    unc = np.asarray(nib.load(result["uncertainty"]).dataobj)
    assert prob.shape == ref_img.shape + (3,) and 0 <= prob.min() and prob.max() <= 1
    assert result["members"] == 1 and not unc.any()             # one member: zeros
    seg = np.asarray(seg_img.dataobj)
    np.testing.assert_array_equal(seg > 0, prob[..., 0] > 0.5)  # WT is the thresholded probability
    # Two-model ensemble with flip TTA: 16 members, a real spread.
    result2 = infer.segment_subject([path, path], item["image"], tmp_path / "ens",
                                    {"device": "cpu", "tta": True, "et_min_volume_mm3": 1e6})
    assert result2["members"] == 16
    assert np.asarray(nib.load(result2["uncertainty"]).dataobj).max() > 0
    seg2 = np.asarray(nib.load(result2["seg"]).dataobj)
    assert not (seg2 == 4).any()                                 # the huge threshold removed all ET
    assert result2["volumes_mm3"]["ET"] == 0
    plain = infer.segment_subject([path, path], item["image"], tmp_path / "plain",
                                  {"device": "cpu", "tta": True})
    seg3 = np.asarray(nib.load(plain["seg"]).dataobj)
    assert result2["et_relabelled"] == bool((seg3 == 4).any()) and not plain["et_relabelled"]
    np.testing.assert_array_equal(seg2, np.where(seg3 == 4, 1, seg3))  # ET -> NCR, nothing else moves


def test_segment_subject_rejects_mismatched_grids(trained, cohort, tmp_path):
    path, _ = trained
    images = list(cohort[0]["image"])
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((22, 24, 24), np.float32), np.eye(4)), odd)
    images[2] = str(odd)
    with pytest.raises(InputError, match="subject s0.*odd.nii.gz"):
        infer.segment_subject([path], images, tmp_path / "x", {"device": "cpu"}, subject="s0")
    assert not (tmp_path / "x" / "seg.nii.gz").exists()


def test_bundle_state_dict_loader_reorders_channels_and_regions(tmp_path):
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    bundle = SegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3,
                       blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2).eval()
    # Make the output bias distinct per channel so a wrong permutation cannot pass.
    with torch.no_grad():
        bundle.conv_final[2].conv.bias.copy_(torch.tensor([0.5, -0.5, 1.5]))
    torch.save(bundle.state_dict(), tmp_path / "model.pt")             # the bundle way: a plain state dict
    loaded = networks.load_model(tmp_path / "model.pt", {})            # defaults: the MONAI BraTS bundle
    assert loaded.meta["source"] == "monai-bundle" and loaded.roi_size == [240, 240, 160]
    assert loaded.meta["blocks_down"] == [1, 2, 2, 4] and loaded.meta["init_filters"] == 16
    x = torch.randn(1, 4, 32, 32, 32)                                   # btpipe order t1, t1ce, t2, flair
    bundle_in = [SEQUENCES.index(c) for c in networks.BUNDLE_CHANNEL_ORDER]
    with torch.no_grad():
        expected = bundle(x[:, bundle_in])                              # TC, WT, ET
        got = loaded.module(x)                                          # WT, TC, ET
    for i, region in enumerate(REGIONS):
        torch.testing.assert_close(got[:, i], expected[:, networks.BUNDLE_REGION_ORDER.index(region)],
                                   atol=1e-5, rtol=1e-5)
    # A custom order given in params.
    order = {"channel_order": ["flair", "t1", "t1ce", "t2"], "region_order": ["ET", "TC", "WT"]}
    custom = networks.load_model(tmp_path / "model.pt", order)
    with torch.no_grad():
        exp2 = bundle(x[:, [SEQUENCES.index(c) for c in order["channel_order"]]])
        got2 = custom.module(x)
    torch.testing.assert_close(got2[:, 0], exp2[:, 2], atol=1e-5, rtol=1e-5)   # WT
    torch.testing.assert_close(got2[:, 2], exp2[:, 0], atol=1e-5, rtol=1e-5)   # ET
    with pytest.raises(ConfigError):
        networks.load_model(tmp_path / "model.pt", {"channel_order": ["t1", "t1", "t2", "flair"]})
    torch.save({"foo": torch.zeros(3)}, tmp_path / "junk.pt")
    with pytest.raises(InputError, match="junk.pt"):
        networks.load_model(tmp_path / "junk.pt", {})


def test_invalid_params_raise_config_error():
    with pytest.raises(ConfigError, match="roi_size"):
        train.resolve_params({"roi_size": [30, 32, 32]})
    with pytest.raises(ConfigError, match="init_filters"):
        train.resolve_params({"init_filters": 12})
    with pytest.raises(ConfigError, match="network"):
        train.resolve_params({"network": "unet"})
    for bad in (0, -1.5, "ten"):
        with pytest.raises(ConfigError, match="time_budget_min"):
            train.resolve_params({"time_budget_min": bad})
    assert train.resolve_params({"network": "dynunet", "roi_size": [40, 40, 40]})["roi_size"] == [40, 40, 40]


def test_dynunet_trains_and_reloads(cohort, tmp_path):
    params = {"network": "dynunet", "init_filters": 4, "roi_size": [16, 16, 16], "batch_size": 1,
              "max_steps": 2, "val_every": 2, "device": "cpu"}
    path = train.train_model(cohort[:1], [], tmp_path, params, seed=0)
    log = pd.read_csv(tmp_path / "training_log.csv")
    assert log["val_dice_mean"].isna().all() and len(log) == 2      # no validation items
    loaded = networks.load_model(path, {})
    assert loaded.network == "dynunet" and loaded.roi_size == [16, 16, 16]
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in loaded.module.state_dict().items())
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_two_channel_model_trains_reloads_and_segments(cohort, tmp_path):
    """A FLAIR + T1ce model (as on the BRATS 2015 cases) keeps its own channel order."""
    two = [{**item, "image": [item["image"][3], item["image"][1]]} for item in cohort]
    params = {"init_filters": 8, "roi_size": [16, 16, 16], "batch_size": 1, "max_steps": 2,
              "val_every": 2, "device": "cpu"}
    path = train.train_model(two[:1], [], tmp_path / "model", params, seed=0)
    loaded = networks.load_model(path, {})
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in loaded.module.state_dict().items())
    out = infer.segment_subject(path, two[3]["image"], tmp_path / "seg", {"device": "cpu"})
    assert nib.load(out["seg"]).shape == nib.load(two[3]["image"][0]).shape


# ------------------------------------------------------------------ time budget and progress

def test_budget_schedule_follows_the_nearer_limit():
    steps_only = train.Budget(max_steps=100)
    assert steps_only.progress(25, spent=1e6) == 0.25                  # the clock is ignored
    assert steps_only.stop_reason(99, 1e6) is None and steps_only.stop_reason(100, 0) == "max_steps"
    timed = train.Budget(max_steps=100, seconds=60.0)
    assert timed.progress(10, spent=30.0) == 0.5                       # time is the nearer limit
    assert timed.progress(80, spent=30.0) == 0.8                       # steps are
    assert timed.stop_reason(40, 59.0) is None and timed.stop_reason(40, 60.0) == "time_budget"
    timed.reserve = 10.0                                               # room for the last validation
    assert timed.progress(10, spent=25.0) == 0.5 and timed.stop_reason(40, 50.0) == "time_budget"
    assert timed.eta(10, spent=5.0) == pytest.approx(45.0)             # 90 steps at 0.5 s
    assert timed.eta(10, spent=40.0) == pytest.approx(20.0)            # capped by the budget
    assert train.lr_factor("poly", 0.0) == 1.0 and train.lr_factor("poly", 1.0) == 0.0
    assert train.lr_factor("cosine", 1.0) == pytest.approx(0.0)


def _tiny(**extra):
    return {"init_filters": 8, "roi_size": [16, 16, 16], "batch_size": 1, "max_steps": 100000,
            "val_every": 100000, "learning_rate": 0.01, "device": "cpu", **extra}


@pytest.fixture
def fake_clock(monkeypatch):
    """The budget's clock advances 0.5 s per optimiser step and 2 s per validation."""
    now = {"t": 0.0}

    def ticking(function, seconds):
        def run(*args, **kwargs):
            now["t"] += seconds
            return function(*args, **kwargs)
        return run

    monkeypatch.setattr(train, "_now", lambda: now["t"])
    monkeypatch.setattr(train, "_optimiser_step", ticking(train._optimiser_step, 0.5))
    monkeypatch.setattr(train, "validate", ticking(train.validate, 2.0))
    return now


@pytest.mark.slow
def test_time_budget_stops_training_and_the_schedule_reaches_its_end(cohort, tmp_path, caplog,
                                                                     fake_clock):
    caplog.set_level(logging.INFO, logger="btpipe.progress")
    params = _tiny(time_budget_min=0.5, val_every=20)              # 30 s
    path = train.train_model(cohort[:2], cohort[2:3], tmp_path, params, seed=1)
    log = pd.read_csv(tmp_path / "training_log.csv")
    summary = json.loads((tmp_path / "training.json").read_text())
    ckpt = torch.load(path, weights_only=True)
    # Validations at 20 and 40 (2 s each) leave 28 s for steps and the last validation's 2 s.
    assert summary["stopped_by"] == ckpt["stopped_by"] == "time_budget"
    assert summary["steps"] == len(log) == ckpt["steps"] == 48 and ckpt["max_steps"] == 100000
    assert summary["time_budget_applied"] and ckpt["time_budget_min"] == 0.5
    assert log["seconds"].iloc[-1] == pytest.approx(30.0)           # within the budget
    assert log.dropna(subset=["val_dice_mean"])["step"].tolist() == [20, 40, 48]
    lr = log["lr"].to_numpy()
    assert (np.diff(lr) < 0).all() and lr[-1] < 0.05 * lr[0]       # the decay reached its end
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("btpipe.progress")]
    assert "100000 steps or 0.5 min, whichever comes first" in lines[0]
    steps_lines = [line for line in lines if line.startswith("step ")]
    assert 18 <= len(steps_lines) <= 21                              # every 5 %
    assert all("loss" in x and "s/step" in x and "ETA" in x for x in steps_lines)
    assert steps_lines[-1].startswith("step 48/100000 (100%)") and "ETA 0.0 min" in steps_lines[-1]
    assert lines[-1] == "training stopped after 48 of 100000 steps (time budget spent) in 0.5 min"


@pytest.mark.slow
def test_deterministic_runs_ignore_the_budget_and_repeat_bit_for_bit(cohort, tmp_path):
    params = _tiny(max_steps=6, time_budget_min=0.0001, deterministic=True)   # 6 ms: would stop at once
    first = train.train_model(cohort[:2], [], tmp_path / "a", params, seed=2)
    second = train.train_model(cohort[:2], [], tmp_path / "b", params, seed=2)
    summary = json.loads((tmp_path / "a" / "training.json").read_text())
    assert summary["steps"] == 6 and summary["stopped_by"] == "max_steps"
    assert not summary["time_budget_applied"] and torch.load(first, weights_only=True)["time_budget_min"] is None
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
