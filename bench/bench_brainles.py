"""btpipe preprocessing side by side with brainles-preprocessing on one real subject.

    python bench/bench_brainles.py [--repeats 3] [--record]

Subject ../shared/data/mri/tcga-fg-6692/native (T1, T1ce, T2, FLAIR with skull,
0.9x0.9x5.5 mm). brainles-preprocessing (the BrainLesion Suite's BraTS recipe,
the closest peer) runs in its own virtual environment (.bench-venvs/brainles,
created on first use with torch pinned to the CPU build), offline: btpipe's
skull-on SRI24 file (`t1_head.nii`: what btpipe's default head-to-head step
registers to, and the kind of atlas brainles uses by default), its ANTs
registrator, its default atlas correction, no brain extraction, T1ce as the
centre modality. btpipe runs `preprocess_subject` in its
default mode (also skull stripping, which brainles skips here). Runs alternate
between the tools, each in a fresh process; median wall of --repeats.
Accuracy: NCC of each tool's atlas-space T1ce against the BraTS-Toolkit
reference `t1c_bet` inside its HD-BET brain mask (the measure of
tests/test_preprocess.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_preprocess import ATLAS, SUBJECT, one_run  # noqa: E402
from record import replace_section  # noqa: E402

REFERENCE = SUBJECT.parent / "reference" / "brats_space"
HEAD_ATLAS = ATLAS.parent / "t1_head.nii"  # `btpipe atlas` writes it beside the brain
VENV = REPO / ".bench-venvs" / "brainles"
BRAINLES_VERSION = "0.6.14"
# torch as btpipe pins it (an unpinned one pulls CUDA builds); antspyx 0.6.1 as
# btpipe's constraints choose it for numpy.
VENV_CONSTRAINTS = "torch==2.13.0\nantspyx==0.6.1\n"

BRAINLES_RUN = """
import sys, time
from pathlib import Path
from brainles_preprocessing.modality import CenterModality, Modality
from brainles_preprocessing.preprocessor import AtlasCentricPreprocessor
from brainles_preprocessing.registration import ANTsRegistrator
native, out, atlas = map(Path, sys.argv[1:4])
start = time.perf_counter()
centre = CenterModality("t1c", native / "t1ce.nii.gz", raw_skull_output_path=out / "t1ce.nii.gz")
moving = [Modality(name, native / f"{name}.nii.gz", raw_skull_output_path=out / f"{name}.nii.gz")
          for name in ("t1", "t2", "flair")]
AtlasCentricPreprocessor(centre, moving, registrator=ANTsRegistrator(), brain_extractor=None,
                         atlas_image_path=atlas, temp_folder=out / "tmp", use_gpu=False,
                         ).run(log_file=out / "brainles.log")
print(time.perf_counter() - start)
"""


def brainles_python() -> Path:
    """The brainles venv's interpreter, creating the venv on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        constraints = VENV / "constraints.txt"
        constraints.write_text(VENV_CONSTRAINTS)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(constraints),
                        f"brainles-preprocessing=={BRAINLES_VERSION}"], check=True)
    return python


def run_brainles(python: Path, out_dir: Path) -> float:
    out_dir.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run([str(python), "-c", BRAINLES_RUN, str(SUBJECT), str(out_dir), str(HEAD_ATLAS)],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def ncc_to_reference(t1ce_path: Path, also_nonzero_in: Path | None = None) -> float:
    """NCC of an atlas-space T1ce against the reference inside its brain mask (and,
    with ``also_nonzero_in``, only where that image is nonzero too)."""
    import ants
    import nibabel as nib
    import numpy as np

    from btpipe.preprocess import register as reg

    ours = reg.nib_to_ants(nib.load(str(t1ce_path)))
    ref, mask = (ants.resample_image_to_target(
        reg.nib_to_ants(nib.load(str(REFERENCE / name))), ours, interp_type=interp)
        for name, interp in (("t1c_bet.nii.gz", "linear"),
                             ("brain_mask_hdbet.nii.gz", "nearestNeighbor")))
    sel = mask.numpy() > 0.5
    if also_nonzero_in is not None:
        sel &= np.asarray(nib.load(str(also_nonzero_in)).dataobj) != 0
    return float(np.corrcoef(ours.numpy()[sel], ref.numpy()[sel])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    python = brainles_python()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="btpipe-bench-brainles-") as tmp:
        for i in range(args.repeats):
            ours.append(one_run(Path(tmp) / f"btpipe{i}")["wall_s"])
            theirs.append(run_brainles(python, Path(tmp) / f"brainles{i}"))
            print(f"run {i}: btpipe {ours[-1]:.1f} s, brainles {theirs[-1]:.1f} s", flush=True)
        ours_t1ce = Path(tmp) / "btpipe0" / "t1ce.nii.gz"
        theirs_t1ce = Path(tmp) / "brainles0" / "t1ce.nii.gz"
        ncc_ours, ncc_theirs = ncc_to_reference(ours_t1ce), ncc_to_reference(theirs_t1ce)
        # brainles keeps the skull, btpipe zeroes voxels outside its own brain mask:
        # the fair comparison of the two poses uses the voxels both have.
        both_ours = ncc_to_reference(ours_t1ce, also_nonzero_in=ours_t1ce)
        both_theirs = ncc_to_reference(theirs_t1ce, also_nonzero_in=ours_t1ce)
    wall_ours, wall_theirs = statistics.median(ours), statistics.median(theirs)
    ratio = wall_theirs / wall_ours
    print(f"btpipe {wall_ours:.1f} s NCC {ncc_ours:.3f}; brainles {wall_theirs:.1f} s "
          f"NCC {ncc_theirs:.3f}; where both have data {both_ours:.3f} vs {both_theirs:.3f}; "
          f"brainles / btpipe time {ratio:.2f}")
    if args.record:
        body = "\n".join([
            f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
            f"{os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f} at the end; "
            f"`bench/bench_brainles.py`: tcga-fg-6692 native (with skull, 0.9x0.9x5.5 mm), "
            f"all four sequences -> SRI24 1 mm, each tool in a fresh process, runs "
            f"alternating, median of {args.repeats}. brainles-preprocessing "
            f"{BRAINLES_VERSION} in its own venv: btpipe's skull-on SRI24 (`t1_head.nii`), "
            "ANTs registrator, atlas correction, no brain extraction (btpipe also "
            "skull-strips with deepbet; default config, head to head).", "",
            "| tool | wall (s, median) | runs (s) | T1ce NCC in the reference brain "
            "| same, where btpipe's skull-stripped output is nonzero |",
            "|---|---:|---|---:|---:|",
            f"| btpipe (default config) | {wall_ours:.1f} | {[round(v, 1) for v in ours]} "
            f"| {ncc_ours:.3f} | {both_ours:.3f} |",
            f"| brainles-preprocessing | {wall_theirs:.1f} | {[round(v, 1) for v in theirs]} "
            f"| {ncc_theirs:.3f} | {both_theirs:.3f} |", "",
            f"Time ratio brainles / btpipe **{ratio:.2f}** (aim >= 2: "
            f"{'met' if ratio >= 2 else 'not met'}); NCC btpipe - brainles on the voxels "
            f"both have **{both_ours - both_theirs:+.3f}** (aim >= 0: "
            f"{'met' if both_ours >= both_theirs else 'not met'}; in the whole reference "
            f"brain {ncc_ours - ncc_theirs:+.3f}, where btpipe's brain mask zeroes voxels "
            "that the reference mask keeps and brainles, not skull-stripping, keeps all).",
        ])
        replace_section(REPO / "docs/benchmarks.md", "Preprocessing against brainles-preprocessing",
                        body)


if __name__ == "__main__":
    main()
