"""Seeded, resumable training of a region-based (WT/TC/ET, sigmoid) MONAI network.

`train_model` is what the workflow calls for each fold model and for the
final model. Design points:

* Regions, not labels: three sigmoid outputs WT, TC, ET (the BraTS-winning
  formulation), loss = Dice (sigmoid, batch-wise) + BCE.
* Patches with tumour oversampling (RandCropByPosNegLabeld, 2/3 centred on
  tumour), flips, a small random affine, intensity scale/shift.
* Every random draw is a pure function of (seed, step, slot) (see
  `data.make_batch`), the model is initialised from the seed, and the
  checkpoint holds model, optimiser, LR-scheduler, AMP-scaler and global RNG
  states plus the log so far. A run resumed from a checkpoint therefore
  continues exactly where it stopped: on CPU its final weights are
  bit-identical to an uninterrupted run's.
* Checkpoints go to `work_dir` (outside results/, declared by no rule), are
  written atomically, and are tied to a fingerprint of the run (params, seed,
  items): a checkpoint of another run is ignored, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from .. import SEQUENCES
from ..errors import ConfigError, InputError
from ..io import torch_save, write_csv
from ..labels import REGIONS, resolve_convention
from . import data as sdata
from .networks import build_network, network_params

log = logging.getLogger(__name__)

DEFAULTS = {
    "network": "segresnet",
    "init_filters": 16,
    "roi_size": [128, 128, 128],
    "batch_size": 2,
    "max_steps": 1000,
    "val_every": 100,
    "learning_rate": 2e-3,
    "weight_decay": 1e-5,
    "lr_schedule": "poly",      # poly (nnU-Net, exponent 0.9) | cosine
    "labels": "brats2021",
    "device": "auto",
    "deterministic": False,
    "normalize": True,
    "cache_rate": 1.0,
    "sw_batch_size": 2,  # a batch of 1 window runs ~7x slower per window on CPU
    "overlap": 0.5,
    "keep_checkpoints": False,  # keep work_dir checkpoints after a finished run
}
LOG_COLUMNS = ["step", "epoch", "train_loss", "lr", "val_dice_WT", "val_dice_TC", "val_dice_ET",
               "val_dice_mean", "seconds"]


def resolve_params(params) -> dict:
    """Defaults + given params, checked. Raises ConfigError naming the key."""
    p = {**DEFAULTS, **{k: v for k, v in dict(params or {}).items() if v is not None}}
    if p["network"] not in ("segresnet", "dynunet"):
        raise ConfigError(f"segmentation.network: {p['network']!r} is not segresnet or dynunet")
    roi = p["roi_size"]
    if isinstance(roi, int):
        roi = [roi] * 3
    if len(roi) != 3 or any(int(r) <= 0 for r in roi):
        raise ConfigError(f"segmentation.roi_size must be three positive integers, got {roi}")
    if p["network"] == "segresnet" and any(int(r) % 8 for r in roi):
        raise ConfigError(f"segmentation.roi_size must be multiples of 8 for SegResNet, got {roi}")
    p["roi_size"] = [int(r) for r in roi]
    for key in ("init_filters", "batch_size", "max_steps", "val_every"):
        if int(p[key]) < 1:
            raise ConfigError(f"segmentation.{key} must be >= 1, got {p[key]}")
        p[key] = int(p[key])
    if p["network"] == "segresnet" and p["init_filters"] % 8:
        raise ConfigError("segmentation.init_filters must be a multiple of 8 for SegResNet "
                          f"(GroupNorm with 8 groups), got {p['init_filters']}")
    if p["lr_schedule"] not in ("poly", "cosine"):
        raise ConfigError(f"segmentation.lr_schedule: {p['lr_schedule']!r} is not poly or cosine")
    if p["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"segmentation.device: {p['device']!r} is not auto, cpu or cuda")
    resolve_convention(p["labels"])
    return p


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("segmentation.device is cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _check_items(items, what):
    items = list(items)
    for item in items:
        subject = item.get("subject")
        if not item.get("image"):
            raise InputError(f"{what} item has no images", subject=subject)
        for path in list(item["image"]) + ([item["label"]] if item.get("label") else []):
            if not Path(path).exists():
                raise InputError(f"{what} file not found", subject=subject, path=path)
        if not item.get("label"):
            raise InputError(f"{what} item has no reference label", subject=subject)
    counts = {len(item["image"]) for item in items}
    if len(counts) > 1:
        raise InputError(f"{what} items have different numbers of channels: {sorted(counts)}")
    return items


def run_fingerprint(train_items, val_items, params, seed) -> str:
    """Hash of what determines the run; a checkpoint is resumed only if it matches."""
    keep = {k: params[k] for k in DEFAULTS if k != "keep_checkpoints"}
    blob = json.dumps({"params": keep, "seed": int(seed),
                       "train": [[i.get("subject"), [str(p) for p in i["image"]], str(i.get("label"))]
                                 for i in train_items],
                       "val": [[i.get("subject"), [str(p) for p in i["image"]], str(i.get("label"))]
                               for i in val_items]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _lr_lambda(schedule, max_steps):
    if schedule == "cosine":
        return lambda done: 0.5 * (1.0 + np.cos(np.pi * min(done, max_steps) / max_steps))
    return lambda done: (1.0 - min(done, max_steps) / max_steps) ** 0.9


class RegionLoss(torch.nn.Module):
    """Dice (sigmoid, pooled over the batch) + binary cross-entropy on region logits."""

    def __init__(self):
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits, target):
        return self.dice(logits, target) + self.bce(logits, target)


def _checkpoints(work_dir: Path):
    return sorted(work_dir.glob("checkpoint_step*.pt"))


def _load_latest_checkpoint(work_dir, fingerprint):
    if work_dir is None or not Path(work_dir).exists():
        return None
    for path in reversed(_checkpoints(Path(work_dir))):
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # atomic writes make this unlikely; fall back to an older one
            log.warning("unreadable checkpoint %s (%s); trying an older one", path, exc)
            continue
        if ckpt.get("fingerprint") == fingerprint:
            return ckpt
        log.warning("checkpoint %s belongs to another run (params, seed or data differ); ignored", path)
        return None
    return None


def _rng_states(device):
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states, device):
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _save_checkpoint(work_dir: Path, step, state: dict, keep_last=2):
    torch_save(work_dir / f"checkpoint_step{step:07d}.pt", state)
    for old in _checkpoints(work_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


def validate(module, val_data, params, device) -> dict:
    """Mean Dice per region over validation volumes (sliding window, threshold 0.5)."""
    from .infer import inference_window, sliding_window_probabilities
    from .metrics import dice

    scores = {r: [] for r in REGIONS}
    module.eval()
    for image, regions in val_data:
        # The same windows as inference (inference_roi, else the patch size).
        roi = inference_window(params["roi_size"], params, image.shape[1:])
        prob = sliding_window_probabilities(module, image, roi, device,
                                            overlap=params["overlap"], sw_batch_size=params["sw_batch_size"])
        pred = prob > 0.5
        for i, region in enumerate(REGIONS):
            scores[region].append(dice(pred[i], regions[i] > 0.5))
    module.train()
    return {r: float(np.mean(v)) for r, v in scores.items()}


def _load_val_data(val_items, params):
    loader = sdata.LoadSubjectd(params["labels"], params["normalize"])
    out = []
    for item in val_items:
        loaded = loader(item)
        out.append((torch.from_numpy(loaded["image"]), loaded["label"]))
    return out


def train_model(train_items, val_items, out_dir, params, seed=0, work_dir=None, on_checkpoint=None) -> Path:
    """Train one model; write out_dir/model.pt and out_dir/training_log.csv atomically.

    train_items / val_items: lists of {"subject", "image": [t1, t1ce, t2,
    flair], "label"} (val_items may be empty: the log then has training loss
    only). params: see DEFAULTS (network, init_filters, roi_size, batch_size,
    max_steps, val_every, learning_rate, labels, device, deterministic, ...).
    work_dir: folder for checkpoints (every val_every steps) from which an
    interrupted run resumes; None disables checkpointing. on_checkpoint:
    optional callable(step) run after each checkpoint is written (for tests
    and progress reporting). Returns the path of model.pt.
    """
    from monai.utils import set_determinism

    p = resolve_params(params)
    train_items = _check_items(train_items, "training")
    val_items = _check_items(val_items or [], "validation")
    if not train_items:
        raise InputError("no training subjects")
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else None
    device = pick_device(p["device"])
    use_amp = device.type == "cuda"
    in_channels = len(train_items[0]["image"])
    channel_order = list(SEQUENCES) if in_channels == len(SEQUENCES) else [f"ch{i}" for i in range(in_channels)]

    set_determinism(seed=int(seed))
    if p["deterministic"]:
        # warn_only: SegResNet's trilinear upsampling has no deterministic CUDA
        # backward; CPU training is deterministic regardless.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(int(seed))
    module = build_network(p["network"], in_channels=in_channels, out_channels=len(REGIONS),
                           init_filters=p["init_filters"], roi_size=p["roi_size"]).to(device)
    if device.type == "cpu":
        module = module.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(p["learning_rate"]),
                                  weight_decay=float(p["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(p["lr_schedule"], p["max_steps"]))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = RegionLoss()

    fingerprint = run_fingerprint(train_items, val_items, p, seed)
    start_step, rows, seconds_before = 0, [], 0.0
    ckpt = _load_latest_checkpoint(work_dir, fingerprint)
    if ckpt is not None:
        module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_states(ckpt["rng"], device)
        start_step, rows, seconds_before = ckpt["step"], list(ckpt["log"]), float(ckpt["seconds"])
        log.info("resuming training from step %d (%s)", start_step, work_dir)

    dataset = sdata.make_train_dataset(train_items, p["roi_size"], p["labels"], p["normalize"], p["cache_rate"])
    val_data = _load_val_data(val_items, p) if val_items else []
    started = time.perf_counter()
    module.train()
    for step in range(start_step + 1, p["max_steps"] + 1):
        images, targets, epoch = sdata.make_batch(dataset, step, p["batch_size"], int(seed))
        images, targets = images.to(device), targets.to(device)
        if device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last_3d)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(module(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"training diverged at step {step} (loss {loss.item()})")
        row = {"step": step, "epoch": epoch, "train_loss": float(loss.item()), "lr": lr,
               **{c: float("nan") for c in LOG_COLUMNS[4:8]}}
        at_checkpoint = step % p["val_every"] == 0 or step == p["max_steps"]
        if at_checkpoint and val_data:
            dices = validate(module, val_data, p, device)
            row.update({f"val_dice_{r}": dices[r] for r in REGIONS})
            row["val_dice_mean"] = float(np.mean(list(dices.values())))
        row["seconds"] = seconds_before + time.perf_counter() - started
        rows.append(row)
        if at_checkpoint and work_dir is not None:
            _save_checkpoint(work_dir, step, {
                "fingerprint": fingerprint, "step": step, "model": module.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_states(device), "log": rows,
                "seconds": row["seconds"]})
            if on_checkpoint is not None:
                on_checkpoint(step)

    return _write_outputs(out_dir, module, p, seed, train_items, in_channels, channel_order, rows, work_dir)


def _write_outputs(out_dir, module, p, seed, train_items, in_channels, channel_order, rows, work_dir) -> Path:
    import monai
    import pandas as pd

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    model_path = out_dir / "model.pt"
    torch_save(model_path, {
        "state_dict": state,
        "network": p["network"],
        "network_params": network_params(p["network"], p["init_filters"], p["roi_size"]),
        "in_channels": in_channels,
        "channel_order": channel_order,
        "region_order": list(REGIONS),
        "labels": p["labels"],
        "roi_size": p["roi_size"],
        "normalize": bool(p["normalize"]),
        "seed": int(seed),
        "steps": p["max_steps"],
        "trained_on": [str(i.get("subject")) for i in train_items],
        "monai_version": str(monai.__version__),
        "torch_version": str(torch.__version__),
    })
    write_csv(out_dir / "training_log.csv", pd.DataFrame(rows, columns=LOG_COLUMNS))
    if work_dir is not None and not p["keep_checkpoints"]:
        for ckpt in _checkpoints(work_dir):
            ckpt.unlink(missing_ok=True)
    return model_path
