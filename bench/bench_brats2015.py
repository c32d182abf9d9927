"""Real expert labels: train the 2-channel (FLAIR, T1c) SegResNet on BRATS 2015
cases 1-3 and score case 4.

    python bench/bench_brats2015.py [--steps 600] [--roi 64] [--init 8] [--record]

Data: ../shared/data/mri/deepmedic-brats2015 (four BRATS 2015 cases, expert
`OTMultiClass` labels 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing;
FLAIR and T1c already z-scored in the brain). Label 3 counts in the tumour
core and the whole tumour (btpipe's `brats2015` convention). Training uses
btpipe's own `train_model` (Dice + BCE on WT/TC/ET, tumour-oversampled
patches, seeded augmentation) on cases 1-3 (no validation subject is left,
so the log holds the training loss); inference is `segment_subject` (Gaussian sliding window), scoring is
`segment.metrics.score` with the BraTS rules. On this CPU-only machine the
budget is reduced (default 600 steps of 64^3 patches); pass a GPU-sized
budget on a machine that has one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section  # noqa: E402

DATA = REPO.parent / "shared/data/mri/deepmedic-brats2015"
CASES = [f"brats_2013_pat000{i}_1" for i in (1, 2, 3, 4)]
CHANNELS = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")


def item(case: str) -> dict:
    folder = DATA / case
    return {"subject": case, "image": [str(folder / c) for c in CHANNELS],
            "label": str(folder / "OTMultiClass.nii.gz")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--init", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    from btpipe.segment.infer import segment_subject
    from btpipe.segment.metrics import score
    from btpipe.segment.train import train_model

    params = {"labels": "brats2015", "init_filters": args.init, "roi_size": [args.roi] * 3,
              "batch_size": 2, "max_steps": args.steps, "val_every": max(50, args.steps // 6),
              "learning_rate": 2e-3, "normalize": False, "device": args.device}
    with tempfile.TemporaryDirectory(prefix="btpipe-brats2015-") as tmp:
        start = time.perf_counter()
        model = train_model([item(c) for c in CASES[:3]], [], Path(tmp) / "model", params,
                            seed=0)
        train_s = time.perf_counter() - start
        test = item(CASES[3])
        start = time.perf_counter()
        out = segment_subject(model, test["image"], Path(tmp) / "seg",
                              params={"device": args.device, "inference_roi": "full"},
                              labels="brats2015", subject=CASES[3])
        infer_s = time.perf_counter() - start
        result = score(out["seg"], test["label"], labels="brats2015")
        log = (Path(tmp) / "model" / "training_log.csv").read_text()
    dice = {r: result[r]["dice"] for r in ("WT", "TC", "ET")}
    hd95 = {r: result[r]["hd95"] for r in ("WT", "TC", "ET")}
    print(log)
    print(f"train {train_s:.0f} s, infer {infer_s:.1f} s; case 4 Dice {dice}, HD95 {hd95}")
    if args.record:
        body = "\n".join([
            f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
            f"{os.cpu_count()} cores, CPU, no GPU), `bench/bench_brats2015.py`: SegResNet "
            f"init {args.init}, 2 channels (FLAIR, T1c), trained on BRATS 2015 cases 1-3 "
            f"({args.steps} steps, batch 2, {args.roi}^3 patches, "
            f"one run, {train_s / 60:.1f} min), scored on case 4 (expert labels; label 3 "
            f"non-enhancing in TC and WT), whole-volume inference {infer_s:.0f} s.", "",
            "| region | Dice | HD95 mm |", "|---|---|---|",
            *[f"| {r} | {dice[r]:.3f} | {hd95[r]:.1f} |" for r in ("WT", "TC", "ET")], "",
            "A reduced CPU budget: three training cases and minutes of training, so "
            "these are a floor, not what the network reaches with BraTS-size data.",
        ])
        replace_section(REPO / "docs/benchmarks.md", "Segmentation on real expert labels "
                        "(BRATS 2015, 2 channels)", body)


if __name__ == "__main__":
    main()
