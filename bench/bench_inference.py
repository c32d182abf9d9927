"""Segmentation inference for one BraTS-size case, as the pipeline runs it.

    python bench/bench_inference.py [--repeats 3] [--record]

One real 4x240x240x155 case (../shared/data/mri/brats-gli-00001-000), one
SegResNet with the public BraTS bundle's shape (init 16, blocks 1-2-2-4;
weights are random here: speed does not depend on them, and we ship none),
no TTA, through `btpipe.segment.infer.segment_subject` (load, normalise,
infer, threshold, write seg/prob/uncertainty). Each run is a fresh process
so its peak RSS is its own; the median of --repeats runs is reported per
setting (window x torch threads). Target: <= 30 s and <= 4 GB on this
2-core machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section, run_json_script  # noqa: E402

CASE = REPO.parent / "shared/data/mri/brats-gli-00001-000"
# btpipe's order t1, t1ce, t2, flair <- BraTS 2023 names t1n, t1c, t2w, t2f
IMAGES = [CASE / f"BraTS-GLI-00001-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f")]
SETTINGS = [("full", 1), ("full", 2), ("128", 2)]

ONE_RUN = """
import json, resource, sys, time, torch
from monai.networks.nets import SegResNet
from btpipe.segment.infer import segment_subject
model, images, out, roi, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=16,
                blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1])
torch.save(net.state_dict(), model)
params = {"device": "cpu", "tta": False,
          "inference_roi": "full" if roi == "full" else [int(roi)] * 3}
start = time.perf_counter()
result = segment_subject(model, images, out, params=params)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)  # this process's own peak and CPU time
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_gb": usage.ru_maxrss / 1024 ** 2, "members": result["members"]}))
"""


def one_run(roi: str, threads: int, workdir: Path) -> dict:
    """One fresh process: wall time of segment_subject, its CPU time and peak RSS
    (CPU and RSS include the imports and the model build before it)."""
    args = json.dumps([str(workdir / "bundle.pt"), [str(p) for p in IMAGES],
                       str(workdir / "out"), roi, threads])
    (workdir / "out").mkdir(exist_ok=True)
    return run_json_script(ONE_RUN, args, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    missing = [str(p) for p in IMAGES if not p.exists()]
    if missing:
        sys.exit(f"missing test case files: {missing}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="btpipe-bench-infer-") as tmp:
        for roi, threads in SETTINGS:
            runs = [one_run(roi, threads, Path(tmp)) for _ in range(args.repeats)]
            row = {"window": "whole volume (`inference_roi: full`)" if roi == "full"
                   else f"{roi}^3, overlap 0.5", "threads": threads,
                   "wall_s": statistics.median(r["wall_s"] for r in runs),
                   "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                   "walls": [round(r["wall_s"], 1) for r in runs],
                   "peak_gb": max(r["peak_gb"] for r in runs)}
            print(row, flush=True)
            rows.append(row)
    if args.record:
        load = os.getloadavg()[0]
        lines = [f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
                 f"{os.cpu_count()} cores, no GPU), load average {load:.1f} at the end; "
                 f"`bench/bench_inference.py`: case brats-gli-00001-000, SegResNet of the BraTS "
                 f"bundle's shape (init 16), one model, no TTA, through `segment_subject` "
                 f"(load, normalise, infer, write); median of {args.repeats} fresh processes.", "",
                 "| window | torch threads | wall s (median) | runs | CPU s | peak RSS GB |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['window']} | {r['threads']} | {r['wall_s']:.1f} | "
                         f"{r['walls']} | {r['cpu_s']:.1f} | {r['peak_gb']:.2f} |")
        best = min((r for r in rows if r["peak_gb"] <= 4.0), key=lambda r: r["wall_s"],
                   default=None)
        if best:
            lines += ["", f"Fastest within 4 GB: {best['window']}, {best['threads']} threads: "
                      f"**{best['wall_s']:.1f} s**, {best['peak_gb']:.2f} GB "
                      f"(target 30 s / 4 GB: {'met' if best['wall_s'] <= 30 else 'not met'})."]
        replace_section(REPO / "docs/benchmarks.md",
                        "Segmentation inference (one 4x240x240x155 case)", "\n".join(lines))


if __name__ == "__main__":
    main()
