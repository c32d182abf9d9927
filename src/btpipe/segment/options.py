"""Which segmentation options feed which step (light: imported when the DAG is built).

The workflow hands each step only the options that change its result, so
that editing an inference setting re-segments subjects without retraining
any model, and a change of device or worker count reruns nothing.
"""

from __future__ import annotations

# Shape the trained model or its training log: a change retrains every model.
TRAINING = ("network", "init_filters", "roi_size", "batch_size", "max_steps", "time_budget_min",
            "val_every", "learning_rate", "lr_schedule", "monitor_subjects")
# Inference and post-processing: a change re-segments subjects, never retrains.
INFERENCE = ("tta", "inference_roi", "overlap", "sw_batch_size", "min_component_fraction",
             "et_min_volume_mm3")
# How a job runs, not what it computes: read at run time, never a reason to rerun.
RUNTIME = ("device", "num_workers", "keep_checkpoints")


def pick(section: dict, keys, **extra) -> dict:
    """The ``keys`` of a config section that are set, plus ``extra``."""
    return {**{k: section[k] for k in keys if k in section}, **extra}


def training_options(section: dict, labels, deterministic: bool) -> dict:
    return pick(section, TRAINING, labels=labels, deterministic=deterministic)


def inference_options(section: dict, labels, deterministic: bool) -> dict:
    return pick(section, INFERENCE, labels=labels, deterministic=deterministic)


def runtime_options(section: dict) -> dict:
    return pick(section, RUNTIME)
