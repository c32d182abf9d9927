"""Slice-bag survival models (DAAL, attention MIL, pooling, soft attention + DeepHit) and 3D CNNs."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from btpipe.errors import InputError
from btpipe.io import read_json, savez_compressed
from btpipe.survival import metrics as M
from btpipe.survival.deep import torch_threads
from btpipe.survival.bags import load_bags, read_bag, synthetic_bag, write_synthetic_cohort
from btpipe.survival.encoders import build_encoder, pretrain_encoder, set_trainable
from btpipe.survival.folds import make_folds
from btpipe.survival.apply import load_final, predict_new
from btpipe.survival.mil import DAAL, BagSurvivalModel, GatedAttention, SoftAttention
from btpipe.survival.registry import MODELS
from btpipe.survival.volumes import VolumeSurvivalModel, build_backbone, load_volume
from survival_helpers import run_image_model

BAG_MODELS = ["bag_mean_cox", "bag_max_cox", "bag_attention_mil", "daal_single", "daal_multiple",
              "bag_soft_deephit"]
# Tiny CPU settings: bags of 32 px read at 16 px, a narrow MONAI ResNet, 1 pre-training epoch.
TINY = {"encoder": "resnet_tiny", "encoder_options": {"widths": [8, 16, 32, 64]}, "size": 16,
        "pretrain_epochs": 1, "epochs": 3, "batch_size": 8, "n_threads": 1, "device": "cpu"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small nets run far faster single-threaded on a loaded 2-core machine (restored after)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    paths, y, ids, signal = write_synthetic_cohort(root, n_subjects=8, size=32, per_plane=2, seed=0)
    return paths, y, ids, make_folds(y, 2, 1, 0, ids)


# ---------------------------------------------------------------- attention maths


def _daal_by_hand(planes, scope="bag"):
    """DAAL on 6 slices (2 per plane) whose queries are orthogonal unit vectors."""
    net = DAAL(dim=6, q_dim=6, v_dim=2, hidden=(), dropout=0.0, planes=planes, scope=scope)
    with torch.no_grad():
        net.W_q.weight.copy_(torch.eye(6) * 3.0)
        net.W_v.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(2, 6) / 10)
    h = torch.eye(6)
    meta = {"anchors": np.array([1, 2, 5]), "plane": np.array([0, 0, 1, 1, 2, 2])}
    return net, h, meta


def test_daal_attention_sums_to_one_and_anchor_attends_to_itself():
    net, h, meta = _daal_by_hand((0, 1, 2))
    U, used = net.attention(h, meta)
    assert U.shape == (3, 6) and used == [0, 1, 2]
    assert torch.allclose(U.sum(dim=1), torch.ones(3))
    for p, anchor in enumerate(meta["anchors"]):
        assert int(U[p].argmax()) == anchor
        assert float(U[p, anchor].detach()) > 0.9  # exp(9) vs exp(0) for orthogonal queries
    risk, U2, r = net(h, meta)
    assert r.shape == (3,) and float(risk.detach()) == pytest.approx(float(r.max().detach()))
    # b_p = sum_s U_p(s) v_s, then the (linear) FC: recompute r by hand
    v = h @ net.W_v.weight.T
    expected = (U @ v) @ net.fc[0].weight.T + net.fc[0].bias
    assert torch.allclose(r, expected.squeeze(-1), atol=1e-6)


def test_daal_single_uses_the_sagittal_anchor_and_plane_scope_masks():
    net, h, meta = _daal_by_hand((0,))
    risk, U, r = net(h, meta)
    assert U.shape == (1, 6) and r.shape == (1,) and float(risk.detach()) == pytest.approx(float(r[0].detach()))
    plane_net, h, meta = _daal_by_hand((0, 1, 2), scope="plane")
    U, _ = plane_net.attention(h, meta)
    own = meta["plane"][None, :] == np.arange(3)[:, None]
    assert torch.all(U[torch.as_tensor(~own)] == 0)
    assert torch.allclose(U.sum(dim=1), torch.ones(3))


def test_gated_and_soft_attention_weights_sum_to_one():
    torch.manual_seed(0)
    for module in (GatedAttention(16, 8), SoftAttention(16)):
        for n in (1, 5, 11):
            h = torch.randn(n, 16)
            z, w = module(h)
            assert w.shape == (1, n) and torch.all(w >= 0)
            assert float(w.sum().detach()) == pytest.approx(1.0, abs=1e-6)
            assert torch.allclose(z, w[0] @ h, atol=1e-6)


# ---------------------------------------------------------------- bag files


def test_read_bag_contract(tmp_path):
    rng = np.random.default_rng(0)
    bag = synthetic_bag(rng, 1.0, size=16, per_plane=3)
    bag["is_anchor"][:] = False  # anchors fall back to the largest tumour area
    savez_compressed(tmp_path / "a" / "slices.npz", **bag)
    sb = read_bag(tmp_path / "a" / "slices.npz", "a", size=8)
    assert sb.images.shape == (9, 4, 8, 8) and sb.images.dtype == np.float32
    for p, row in enumerate(sb.anchor_positions()):
        rows = np.nonzero(sb.plane == p)[0]
        assert row == rows[np.argmax(sb.tumour_area[rows])]
    assert np.allclose(sb.relative_position()[:3], [0, 1 / 3, 2 / 3])
    del bag["tumour_area"]
    savez_compressed(tmp_path / "b" / "slices.npz", **bag)
    with pytest.raises(InputError, match="tumour_area") as err:
        read_bag(tmp_path / "b" / "slices.npz", "b")
    assert "b" in str(err.value)
    with pytest.raises(InputError, match="no slice bag path"):
        load_bags({}, ["zz"])


# ---------------------------------------------------------------- encoders


@pytest.mark.slow
def test_monai_encoders_give_features_and_freeze_all_but_last():
    x = torch.randn(2, 4, 32, 32)
    for name, dim in (("resnet18", 512), ("vit", 192), ("efficientnet_b0", 1280)):
        enc = build_encoder(name, 4, 32)
        assert enc.out_dim == dim
        enc.eval()
        with torch.no_grad():
            assert enc(x).shape == (2, dim)
        total = sum(p.numel() for p in enc.parameters())
        last = set_trainable(enc, "all_but_last")
        assert 0 < last < total
        assert set_trainable(enc, "all") == 0 and set_trainable(enc, "none") == total


def test_pretext_pretraining_sees_only_given_bags(cohort):
    paths, y, ids, folds = cohort
    bags = load_bags(paths, ids[:4], size=16)
    enc = build_encoder("resnet_tiny", 4, 16, widths=[8, 16, 32, 64])
    log = pretrain_encoder(enc, list(bags.values()), epochs=2, batch_size=6, device="cpu")
    assert log["subjects"] == list(ids[:4]) and log["n_slices"] == 24
    assert len(log["loss"]) == 2 and np.isfinite(log["loss"]).all()


def test_bag_models_share_one_pretraining_per_fold_without_changing_results(cohort, tmp_path):
    """The second bag model loads each fold's pre-trained encoder from the cache, and
    its predictions equal those of the same model trained with no cache."""
    paths, y, ids, folds = cohort
    params = {"model_params": {m: TINY for m in ("bag_mean_cox", "bag_attention_mil")},
              "n_permutations": 10}
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_image_model("bag_mean_cox", paths, y, ids, folds, tmp_path / "a", params, pretrain_cache=cache)
        shared = run_image_model("bag_attention_mil", paths, y, ids, folds, tmp_path / "a", params,
                               pretrain_cache=cache)
        alone = run_image_model("bag_attention_mil", paths, y, ids, folds, tmp_path / "b", params)
    assert len(list(cache.glob("*.pt"))) == len(folds) + 1  # each fold and the final fit
    first = read_json(tmp_path / "a/bag_mean_cox/card.json")
    second = read_json(tmp_path / "a/bag_attention_mil/card.json")
    assert not any(info["pretrain_cached"] for info in first["fold_training"])
    assert all(info["pretrain_cached"] for info in second["fold_training"])
    for f, info in zip(folds, second["fold_training"]):
        assert set(info["pretrain_subjects"]) == set(f["train_ids"])
    assert np.allclose(shared["risk"], alone["risk"], atol=1e-5)


def test_bag_model_scores_held_out_subjects_it_never_saw(cohort, tmp_path):
    paths, y, ids, _ = cohort
    hold, dev = ids[:2], np.arange(2, len(ids))
    folds = make_folds(y[dev], 2, 1, 0, ids[dev])
    params = {"model_params": {"bag_mean_cox": TINY}, "n_permutations": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pred = run_image_model("bag_mean_cox", paths, y, ids, folds, tmp_path, params,
                             holdout_ids=hold)
    assert not set(pred["subject"]) & set(hold)
    held = pd.read_parquet(tmp_path / "bag_mean_cox/holdout_predictions.parquet")
    assert list(held["subject"]) == list(hold) and (held["n_folds"] == 2).all()
    assert held["risk"].between(0, 1).all()  # mean percentile among training risks
    card = read_json(tmp_path / "bag_mean_cox/card.json")
    assert card["n"] == len(dev) and card["n_holdout"] == 2
    assert not set(card["final_training"]["pretrain_subjects"]) & set(hold)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", BAG_MODELS)
def test_bag_model_cross_validates_without_leakage(cohort, tmp_path, name):
    paths, y, ids, folds = cohort
    params = {"model_params": {name: TINY}, "n_permutations": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pred = run_image_model(name, paths, y, ids, folds, tmp_path, params, seed=0)
    tested = {s for f in folds for s in f["test_ids"]}
    assert set(pred["subject"]) == tested == set(ids)
    assert np.isfinite(pred["risk"]).all()
    out = tmp_path / name
    card = read_json(out / "card.json")
    assert card["fold_errors"] == [] and card["input"] == "bags"
    for f, info in zip(folds, card["fold_training"]):
        assert set(info["pretrain_subjects"]) == set(f["train_ids"])  # never a test subject
    assert set(card["final_training"]["pretrain_subjects"]) == set(ids)
    metrics = pd.read_parquet(out / "fold_metrics.parquet")
    assert {"c_harrell", "c_td", "ibs", "class_accuracy"} <= set(metrics["metric"])
    assert (out / "final.pt").exists()
    if MODELS[name].description.startswith("attention"):
        att = pd.read_parquet(out / "attention.parquet")
        sums = att.groupby(["subject", "fold", "query"])["weight"].sum()
        assert np.allclose(sums, 1.0, atol=1e-5)
        assert set(att["subject"]) == set(ids)
        n_queries = 3 if name == "daal_multiple" else 1
        assert len(att) == len(ids) * 6 * n_queries
    # the saved final model scores new bags as the fitted one did
    model, _ = load_final(out / "final.pt")
    bags3 = load_bags(paths, ids[:3], size=16)
    new = predict_new(out / "final.pt", bags3)
    assert np.allclose(new["risk"], model.predict(list(bags3.values())))
    assert {"surv_365d", "surv_730d"} <= set(new.columns)


def test_bag_mean_cox_learns_a_brightness_signal(tmp_path):
    paths, y, ids, signal = write_synthetic_cohort(tmp_path, n_subjects=20, size=32, per_plane=1, seed=3,
                                                   censor_fraction=0.1)
    bags = list(load_bags(paths, ids, size=16).values())
    # random (not pre-trained) encoder features: the test is about the pooling + Cox head learning
    opts = {**TINY, "epochs": 30, "pretrain_epochs": 0, "batch_size": 20}
    model = BagSurvivalModel("mean", **opts, random_state=0).fit(bags, y)
    c = M.harrell_c(y["event"], y["time"], model.predict(bags))
    assert c > 0.7, c
    again = BagSurvivalModel("mean", **opts, random_state=0).fit(bags, y)
    assert np.allclose(again.predict(bags), model.predict(bags))  # seeded
    surv = model.predict_survival_function(bags, return_array=True)
    assert (np.diff(surv, axis=1) <= 1e-12).all() and (surv <= 1).all() and (surv >= 0).all()


# ---------------------------------------------------------------- 3D comparators


@pytest.mark.slow
def test_3d_comparators_forward_backward_on_tiny_volumes():
    for name, side in (("densenet121", 32),):  # resnet18-3D trains in the lab test below
        net = build_backbone(name, 4)
        x = torch.randn(2, 4, side, side, side)
        risk = net(x).reshape(-1)
        assert risk.shape == (2,)
        from btpipe.survival.deep import cox_partial_likelihood

        loss = cox_partial_likelihood(risk, np.array([10.0, 20.0]), np.array([True, True]))
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def _write_volumes(root, n, seed=0):
    rng = np.random.default_rng(seed)
    paths = {}
    for i in range(n):
        subject = f"V{i}"
        seqs = []
        for q in ("t1", "t1ce", "t2", "flair"):
            data = np.zeros((20, 22, 18), np.float32)
            data[3:17, 4:18, 2:16] = rng.normal(1.0 + 0.2 * i, 0.2, (14, 14, 14))
            path = root / subject / f"{q}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
            seqs.append(path)
        paths[subject] = seqs
    return paths


def test_load_volume_crops_resizes_and_fills_missing_sequences(tmp_path):
    paths = _write_volumes(tmp_path, 1)["V0"]
    vol = load_volume([paths[0], None, paths[2], paths[3]], size=12, crop="brain", subject="V0")
    assert vol.shape == (4, 12, 12, 12)
    assert np.all(vol[1] == 0) and vol[0].min() > 0  # brain crop leaves no background
    with pytest.raises(InputError, match="V0"):
        load_volume([tmp_path / "nope.nii.gz"] * 4, subject="V0")


@pytest.mark.slow
def test_volume_model_runs_through_the_lab(tmp_path):
    paths = _write_volumes(tmp_path / "in", 4)
    ids = np.asarray(list(paths))
    from btpipe.survival.data import make_y

    y = make_y([True, True, False, True], [100.0, 300.0, 500.0, 200.0])
    folds = make_folds(y, 2, 1, 0, ids)
    params = {"n_permutations": 10, "model_params": {"cnn3d_resnet18": {
        "size": 16, "epochs": 1, "batch_size": 2, "device": "cpu", "n_threads": 1}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pred = run_image_model("cnn3d_resnet18", paths, y, ids, folds, tmp_path / "out", params, seed=0)
    assert set(pred["subject"]) == set(ids) and np.isfinite(pred["risk"]).all()
    model, bundle = load_final(tmp_path / "out" / "cnn3d_resnet18" / "final.pt")
    assert isinstance(model, VolumeSurvivalModel) and bundle["input"] == "volumes"


def test_freeze_all_but_last_trains_only_the_last_block(cohort):
    paths, y, ids, folds = cohort
    bags = list(load_bags(paths, ids, size=16).values())
    opts = {**TINY, "freeze": "all_but_last", "epochs": 2, "pretrain_epochs": 0}
    model = BagSurvivalModel("gated", **opts, random_state=0)
    model.fit(bags, y)
    torch.manual_seed(0)
    fresh = build_encoder("resnet_tiny", 4, 16, widths=[8, 16, 32, 64])  # same init as the fit
    before = dict(fresh.named_parameters())
    after = dict(model.encoder_.named_parameters())
    changed = {k for k in after if not torch.equal(after[k].detach(), before[k].detach())}
    assert changed and all(k.startswith("backbone.layer4") for k in changed)
    assert np.isfinite(model.predict(bags)).all()


def test_final_bag_model_predicts_subjects_without_outcomes(cohort, tmp_path):
    """Subjects left out of cross-validation get the final model's predictions, the same
    risks the saved final.pt gives them."""
    paths, y, ids, _ = cohort
    new, dev = list(ids[:2]), np.arange(2, len(ids))
    folds = make_folds(y[dev], 2, 1, 0, ids[dev])
    params = {"model_params": {"bag_mean_cox": TINY}, "n_permutations": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_image_model("bag_mean_cox", paths, y[dev], ids[dev], folds, tmp_path, params,
                      new_ids=new)
    predicted = pd.read_parquet(tmp_path / "bag_mean_cox/predictions_new.parquet")
    assert list(predicted["subject"]) == new
    assert (predicted["predicted_days"] > 0).all() and set(predicted["risk_group"]) <= {"high", "low"}
    again = predict_new(tmp_path / "bag_mean_cox/final.pt", load_bags(paths, new, size=16))
    assert np.allclose(predicted["risk"], again["risk"], atol=1e-5)
