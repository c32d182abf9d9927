"""Peak memory of segmentation training does not grow with the number of subjects.

Each measurement is a fresh Python process (peak RSS = VmHWM) that trains a
tiny model for a few steps over N synthetic subjects read from disk.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_segment_train import make_subject

SIZE = 96  # voxels per side: one subject's 4-channel float32 volume is 14 MB

TRAIN = """
import json, sys, torch
torch.set_num_threads(1)
from btpipe.segment import train
items = json.loads(sys.argv[1])
params = {"init_filters": 8, "roi_size": [32, 32, 32], "batch_size": 2, "max_steps": 4,
          "val_every": 4, "device": "cpu"}
train.train_model(items, [], sys.argv[2], params, seed=0, cache_dir=sys.argv[3])
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_mb": peak_kb / 1024}))
"""


def peak_training_rss_mb(items, out_dir) -> float:
    proc = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(items), str(out_dir / "model"),
                           str(out_dir / "cache")], capture_output=True, text=True, timeout=600,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


@pytest.mark.slow
def test_training_peak_memory_does_not_grow_with_the_cohort(tmp_path):
    subjects = [make_subject(tmp_path / "data", f"s{i:02d}", size=SIZE, seed=i) for i in range(16)]
    volume_mb = 4 * SIZE ** 3 * 4 / 2 ** 20
    few = peak_training_rss_mb(subjects[:4], tmp_path / "few")
    many = peak_training_rss_mb(subjects, tmp_path / "many")
    # Holding the volumes in memory would add 12 subjects (~170 MB of images alone).
    assert abs(many - few) < volume_mb, (few, many, volume_mb)
