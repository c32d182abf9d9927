"""Segmentation training (learning, resume), inference outputs and weight loading."""

from __future__ import annotations

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


def test_training_draws_leave_the_cached_volumes_untouched(cohort):
    """The cache is not deep-copied per draw, so no augmentation may write into it."""
    from btpipe.segment import data as sdata

    dataset = sdata.make_train_dataset(cohort[:2], [16, 16, 16])
    cached = [{k: np.asarray(v).copy() for k, v in item.items() if k != "subject"} for item in dataset._cache]
    first = [sdata.make_batch(dataset, step, 2, seed=3)[:2] for step in range(1, 25)]
    again = [sdata.make_batch(dataset, step, 2, seed=3)[:2] for step in range(1, 25)]
    for item, before in zip(dataset._cache, cached):
        for key, value in before.items():
            np.testing.assert_array_equal(np.asarray(item[key]), value, err_msg=key)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, again))
    # Crops are centred on tumour about 2 times in 3 (pos_fraction).
    centred_on_tumour = np.mean([float(lbl[i, 0, 8, 8, 8]) for _, lbl in first for i in range(2)])
    assert 0.45 < centred_on_tumour < 0.9


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
    result = infer.segment_subject([path], item["image"], tmp_path / "one", {"device": "cpu"},
                                   labels="brats2021", subject="s3")
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
