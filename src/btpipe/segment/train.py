"""Seeded, resumable training of a region-based (WT/TC/ET, sigmoid) MONAI network.

`train_model` is what the workflow calls for each fold model and for the
final model. Design points:

* Regions, not labels: three sigmoid outputs WT, TC, ET (the BraTS-winning
  formulation), loss = Dice (sigmoid, batch-wise) + BCE.
* Subjects are read from a compact on-disk cache (`patches`), one patch at a
  time, so memory does not grow with the cohort. Patches with tumour
  oversampling (2/3 centred on tumour), flips, a small random affine,
  intensity scale/shift.
* Every random draw is a pure function of (seed, step, slot) (see
  `patches.TrainingBatches`), the model is initialised from the seed, and the
  checkpoint holds model, optimiser, AMP-scaler and global RNG states plus
  the log so far (the learning rate is a function of the steps done and the
  time spent, both in the checkpoint). A run resumed from a checkpoint therefore
  continues exactly where it stopped: on CPU its final weights are
  bit-identical to an uninterrupted run's.
* Checkpoints go to `work_dir` (outside results/, declared by no rule), are
  written atomically, and are tied to a fingerprint of the run (params, seed,
  items): a checkpoint of another run is ignored, never resumed.
* Optionally a wall-clock budget per model (`time_budget_min`): training stops
  at `max_steps` or when the budget is spent, whichever comes first, and the
  learning-rate decay follows whichever limit is nearer (`Budget`), so it
  reaches its end on a slow CPU too. `deterministic: true` ignores the budget
  (a clock-dependent stop cannot give bit-identical reruns).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import SEQUENCES
from ..errors import ConfigError, InputError
from ..io import torch_save, write_csv, write_json
from ..labels import REGIONS, resolve_convention
from . import patches
from .infer import inference_window, sliding_window_probabilities
from .metrics import dice
from .networks import build_network, network_params, pick_device
from .options import RUNTIME

log = logging.getLogger(__name__)
# Step, loss and ETA lines: workflow_support.step_log also shows this logger on
# the console (stderr), where Snakemake prints what its jobs say.
progress_log = logging.getLogger("btpipe.progress.segment")
PROGRESS_EVERY = 0.05       # a progress line every 5 % of the run
STOP_REASONS = {"max_steps": "max_steps reached", "time_budget": "time budget spent"}
_now = time.perf_counter    # the clock the budget reads (tests substitute a fake one)

DEFAULTS = {
    "network": "segresnet",
    "init_filters": 16,
    "roi_size": [128, 128, 128],
    "batch_size": 2,
    "max_steps": 20000,
    "time_budget_min": None,    # wall-clock minutes per model (validation included); None: steps only
    "val_every": 500,
    "learning_rate": 2e-4,
    "weight_decay": 1e-5,
    "lr_schedule": "poly",      # poly (nnU-Net, exponent 0.9) | cosine
    "labels": "brats2021",
    "device": "auto",
    "deterministic": False,
    "normalize": True,
    "num_workers": 0,           # DataLoader processes cutting patches (0: in the training process)
    "monitor_subjects": 8,      # held-out subjects scored for the learning curve (None: all)
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
    if int(p["num_workers"]) < 0:
        raise ConfigError(f"segmentation.num_workers must be >= 0, got {p['num_workers']}")
    p["num_workers"] = int(p["num_workers"])
    if p["monitor_subjects"] is not None and int(p["monitor_subjects"]) < 0:
        raise ConfigError(f"segmentation.monitor_subjects must be >= 0, got {p['monitor_subjects']}")
    budget = p["time_budget_min"]
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ConfigError(f"segmentation.time_budget_min must be a positive number of minutes "
                          f"or null, got {budget!r}")
    if p["lr_schedule"] not in ("poly", "cosine"):
        raise ConfigError(f"segmentation.lr_schedule: {p['lr_schedule']!r} is not poly or cosine")
    if p["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"segmentation.device: {p['device']!r} is not auto, cpu or cuda")
    resolve_convention(p["labels"])
    return p


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
    # Run-time options (device, workers) do not define the run: it may resume under others.
    keep = {k: params[k] for k in DEFAULTS if k not in RUNTIME}
    blob = json.dumps({"params": keep, "seed": int(seed),
                       "train": [[i.get("subject"), [str(p) for p in i["image"]], str(i.get("label"))]
                                 for i in train_items],
                       "val": [[i.get("subject"), [str(p) for p in i["image"]], str(i.get("label"))]
                               for i in val_items]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def lr_factor(schedule, progress) -> float:
    """Learning-rate multiplier at `progress` (0 at the start, 1 at the end of the run)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + np.cos(np.pi * progress))
    return (1.0 - progress) ** 0.9


def time_budget_seconds(p) -> float | None:
    """The wall-clock budget per model in seconds; None when unset or when
    `deterministic` (a clock-dependent stop could not give bit-identical reruns)."""
    if p["time_budget_min"] is None or p["deterministic"]:
        return None
    return 60.0 * float(p["time_budget_min"])


@dataclass
class Budget:
    """Where a run stands against `max_steps` and its wall-clock budget.

    `spent` is the loop's wall time so far (validation included, summed over
    interruptions). The time side is measured against the budget less
    `reserve`, the duration of the latest validation, so the final validation
    still ends within the budget (before the first validation it is unknown:
    a budget shorter than `val_every` steps can be overrun by one validation).
    `progress` drives the learning-rate schedule: the larger of the step and
    time fractions, so the decay reaches its end whichever limit stops the run.
    """

    max_steps: int
    seconds: float | None = None     # None: steps only
    reserve: float = 0.0

    def _time_fraction(self, spent) -> float:
        if self.seconds is None:
            return 0.0
        return spent / max(self.seconds - self.reserve, 1e-9)

    def progress(self, done: int, spent: float) -> float:
        return min(1.0, max(done / self.max_steps, self._time_fraction(spent)))

    def stop_reason(self, done: int, spent: float) -> str | None:
        """Why the run ends after `done` steps: "max_steps", "time_budget", or None."""
        if done >= self.max_steps:
            return "max_steps"
        if self._time_fraction(spent) >= 1.0:
            return "time_budget"
        return None

    def eta(self, done: int, spent: float) -> float:
        """Seconds left: the steps still to run at the pace so far, capped by the budget."""
        by_steps = (self.max_steps - done) * spent / max(done, 1)
        if self.seconds is None:
            return by_steps
        return max(0.0, min(by_steps, self.seconds - spent))


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


def validate(module, val_folders, params, device) -> dict:
    """Mean Dice per region over the validation subjects' cached crops (sliding window,
    threshold 0.5), read one subject at a time."""
    scores = {r: [] for r in REGIONS}
    module.eval()
    for folder in val_folders:
        image, regions = patches.load_cached_subject(folder)
        # The same windows as inference (inference_roi, else the patch size).
        roi = inference_window(params["roi_size"], params, image.shape[1:])
        prob = sliding_window_probabilities(module, image, roi, device,
                                            overlap=params["overlap"], sw_batch_size=params["sw_batch_size"])
        pred = prob > 0.5
        for i, region in enumerate(REGIONS):
            scores[region].append(dice(pred[i], regions[i]))
    module.train()
    return {r: float(np.mean(v)) for r, v in scores.items()}


def monitored(val_items, limit):
    """The validation items scored during training: all, or the first ``limit`` by subject id
    (a fixed choice, so resumed and repeated runs score the same subjects)."""
    items = sorted(val_items, key=lambda i: str(i.get("subject")))
    return items if limit is None else items[:int(limit)]


def _cache_folder(cache_dir, work_dir):
    """(folder for the training-input cache, TemporaryDirectory or None): the given folder,
    work_dir/inputs, or a temporary folder removed when its handle is dropped."""
    if cache_dir is not None:
        return Path(cache_dir), None
    if work_dir is not None:
        return Path(work_dir) / "inputs", None
    temporary = tempfile.TemporaryDirectory(prefix="btpipe-train-")
    return Path(temporary.name), temporary


def train_model(train_items, val_items, out_dir, params, seed=0, work_dir=None, on_checkpoint=None,
                cache_dir=None) -> Path:
    """Train one model; write out_dir/model.pt, training_log.csv and training.json atomically.

    train_items / val_items: lists of {"subject", "image": [t1, t1ce, t2,
    flair], "label"} (val_items may be empty: the log then has training loss
    only). params: see DEFAULTS (network, init_filters, roi_size, batch_size,
    max_steps, time_budget_min, val_every, learning_rate, labels, device,
    deterministic, ...). Training stops at max_steps or, unless
    deterministic, when time_budget_min minutes of wall time are spent
    (`Budget`); out_dir/training.json records the steps run and why it
    stopped. Progress lines (step, loss, ETA) every 5 % go to the
    "btpipe.progress" logger. work_dir: folder for checkpoints (every
    val_every steps) from which an interrupted run resumes; None disables
    checkpointing. on_checkpoint: optional callable(step) run after each
    checkpoint is written (for tests and progress reporting). cache_dir: where
    the subjects' compact training inputs are written and shared between jobs
    (default: work_dir/inputs, or a temporary folder). Returns the path of
    model.pt.
    """
    from monai.utils import set_determinism

    p = resolve_params(params)
    train_items = _check_items(train_items, "training")
    val_items = monitored(_check_items(val_items or [], "validation"), p["monitor_subjects"])
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
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = RegionLoss()
    budget = Budget(p["max_steps"], time_budget_seconds(p))

    fingerprint = run_fingerprint(train_items, val_items, p, seed)
    start_step, rows, seconds_before = 0, [], 0.0
    ckpt = _load_latest_checkpoint(work_dir, fingerprint)
    if ckpt is not None:
        module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_states(ckpt["rng"], device)
        start_step, rows, seconds_before = ckpt["step"], list(ckpt["log"]), float(ckpt["seconds"])
        budget.reserve = float(ckpt.get("reserve", 0.0))
        log.info("resuming training from step %d (%s)", start_step, work_dir)

    cache, _temporary = _cache_folder(cache_dir, work_dir)  # the handle keeps a temporary cache alive
    train_folders = patches.ensure_cached(train_items, p["labels"], p["normalize"], cache)
    val_folders = patches.ensure_cached(val_items, p["labels"], p["normalize"], cache)
    batches = patches.TrainingBatches(train_folders, p["roi_size"], p["batch_size"], p["max_steps"],
                                      int(seed))
    loader = patches.batch_loader(batches, start_step + 1, p["num_workers"])
    _log_plan(p, budget, len(train_items), len(val_items or []))
    started = _now()

    def spent():
        return seconds_before + _now() - started

    module.train()
    step, stopped_by = start_step, budget.stop_reason(start_step, seconds_before)
    next_report = _next_report(budget.progress(start_step, seconds_before))
    while stopped_by is None:
        step += 1
        images, targets, epoch = next(loader)
        images, targets = images.to(device), targets.to(device)
        if device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last_3d)
        lr = float(p["learning_rate"]) * lr_factor(p["lr_schedule"], budget.progress(step - 1, spent()))
        loss = _optimiser_step(module, optimizer, scaler, loss_fn, images, targets, lr, use_amp)
        if not math.isfinite(loss):
            raise RuntimeError(f"training diverged at step {step} (loss {loss})")
        row = {"step": step, "epoch": epoch, "train_loss": loss, "lr": lr,
               **{c: float("nan") for c in LOG_COLUMNS[4:8]}}
        stopped_by = budget.stop_reason(step, spent())
        at_checkpoint = step % p["val_every"] == 0 or stopped_by is not None
        if at_checkpoint and val_folders:
            began = _now()
            dices = validate(module, val_folders, p, device)
            budget.reserve = _now() - began
            row.update({f"val_dice_{r}": dices[r] for r in REGIONS})
            row["val_dice_mean"] = float(np.mean(list(dices.values())))
        row["seconds"] = spent()
        rows.append(row)
        if budget.progress(step, row["seconds"]) >= next_report or stopped_by is not None:
            _log_progress(budget, row, rows)
            next_report = _next_report(budget.progress(step, row["seconds"]))
        if at_checkpoint and work_dir is not None:
            _save_checkpoint(work_dir, step, {
                "fingerprint": fingerprint, "step": step, "model": module.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_states(device), "log": rows, "seconds": row["seconds"],
                "reserve": budget.reserve})
            if on_checkpoint is not None:
                on_checkpoint(step)

    summary = training_summary(p, budget, rows, stopped_by)
    progress_log.info("training stopped after %d of %d steps (%s) in %.1f min",
                      summary["steps"], p["max_steps"], STOP_REASONS[stopped_by],
                      summary["seconds"] / 60)
    return _write_outputs(out_dir, module, p, seed, train_items, in_channels, channel_order, rows,
                          work_dir, summary)


def _optimiser_step(module, optimizer, scaler, loss_fn, images, targets, lr, use_amp) -> float:
    """One forward/backward/update at learning rate `lr`; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=use_amp):
        loss = loss_fn(module(images), targets)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.item())


def _next_report(progress: float) -> float:
    """The next multiple of PROGRESS_EVERY above `progress`."""
    return (math.floor(progress / PROGRESS_EVERY + 1e-9) + 1) * PROGRESS_EVERY


def _log_plan(p, budget: Budget, n_train: int, n_val: int) -> None:
    limit = (f"{p['max_steps']} steps or {budget.seconds / 60:.1f} min, whichever comes first"
             if budget.seconds is not None else f"{p['max_steps']} steps")
    if p["time_budget_min"] is not None and budget.seconds is None:
        limit += " (deterministic: the time budget is ignored)"
    progress_log.info("training on %d subjects (%d for validation): %s", n_train, n_val, limit)


def _log_progress(budget: Budget, row: dict, rows: list) -> None:
    done, spent = row["step"], row["seconds"]
    recent = [r["train_loss"] for r in rows[-20:]]
    val = "" if math.isnan(row["val_dice_mean"]) else f", validation Dice {row['val_dice_mean']:.3f}"
    progress_log.info("step %d/%d (%.0f%%), loss %.3f (mean of last %d), lr %.2g, %.2f s/step%s, "
                      "ETA %.1f min", done, budget.max_steps, 100 * budget.progress(done, spent),
                      float(np.mean(recent)), len(recent), row["lr"], spent / done, val,
                      budget.eta(done, spent) / 60)


def training_summary(p, budget: Budget, rows: list, stopped_by: str) -> dict:
    """What the run did: steps, why it stopped, its time (training.json, model.pt)."""
    steps = rows[-1]["step"] if rows else 0
    seconds = float(rows[-1]["seconds"]) if rows else 0.0
    return {"steps": steps, "max_steps": p["max_steps"], "stopped_by": stopped_by,
            "time_budget_min": p["time_budget_min"],
            "time_budget_applied": budget.seconds is not None,
            "deterministic": bool(p["deterministic"]), "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / steps, 3) if steps else None,
            "lr_schedule": p["lr_schedule"]}


def _write_outputs(out_dir, module, p, seed, train_items, in_channels, channel_order, rows, work_dir,
                   summary) -> Path:
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
        "steps": summary["steps"],
        "max_steps": p["max_steps"],
        "stopped_by": summary["stopped_by"],
        "time_budget_min": p["time_budget_min"] if summary["time_budget_applied"] else None,
        "trained_on": [str(i.get("subject")) for i in train_items],
        "monai_version": str(monai.__version__),
        "torch_version": str(torch.__version__),
    })
    write_csv(out_dir / "training_log.csv", pd.DataFrame(rows, columns=LOG_COLUMNS))
    write_json(out_dir / "training.json", summary)
    if work_dir is not None and not p["keep_checkpoints"]:
        for ckpt in _checkpoints(work_dir):
            ckpt.unlink(missing_ok=True)
    return model_path
