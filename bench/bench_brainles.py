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
Accuracy, for every run (brainles' ANTs search samples at random, so its pose
varies from run to run), median reported: NCC of each tool's atlas-space T1ce
against the BraTS-Toolkit reference `t1c_bet` on the voxels where the reference
and both outputs have brain (t1c_bet > 0, btpipe's skull-stripped output nonzero;
brainles keeps the skull), the reading of tests/test_preprocess.py; and, for
continuity with earlier records, inside the reference's HD-BET mask (whose
disagreement with t1c_bet > 0 caps it near 0.86 even at the reference's pose).
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


def ncc_to_reference(pair: tuple[Path, Path]) -> dict:
    """NCC against `t1c_bet` of btpipe's and brainles' atlas-space T1ce (``pair``):
    on the voxels where the reference and both outputs have brain, and inside the
    reference's HD-BET mask."""
    import ants
    import nibabel as nib

    from btpipe.preprocess import register as reg

    ours = reg.nib_to_ants(nib.load(str(pair[0])))
    # Same world box, arrays flipped between the files: compare in world space on
    # btpipe's grid (its voxel centres are the others', so nearest neighbour is exact).
    theirs, ref, hdbet = (ants.resample_image_to_target(
        reg.nib_to_ants(nib.load(str(path))), ours, interp_type="nearestNeighbor").numpy()
        for path in (pair[1], REFERENCE / "t1c_bet.nii.gz",
                     REFERENCE / "brain_mask_hdbet.nii.gz"))
    shared = (ref > 0) & (ours.numpy() != 0) & (theirs != 0)
    scores = {}
    for tool, image in (("btpipe", ours.numpy()), ("brainles", theirs)):
        scores[tool] = reg.ncc(image, ref, shared)
        scores[f"{tool}_hdbet"] = reg.ncc(image, ref, hdbet > 0.5)
    return scores


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _row(tool: str, walls: list[float], scores: list[dict], key: str) -> str:
    values = [run[key] for run in scores]
    return (f"| {tool} | {statistics.median(walls):.1f} | {[round(v, 1) for v in walls]} "
            f"| {_cell(values)} | {_cell([run[f'{key}_hdbet'] for run in scores])} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    python = brainles_python()
    ours, theirs, scores = [], [], []
    with tempfile.TemporaryDirectory(prefix="btpipe-bench-brainles-") as tmp:
        for i in range(args.repeats):
            ours.append(one_run(Path(tmp) / f"btpipe{i}")["wall_s"])
            theirs.append(run_brainles(python, Path(tmp) / f"brainles{i}"))
            scores.append(ncc_to_reference((Path(tmp) / f"btpipe{i}" / "t1ce.nii.gz",
                                            Path(tmp) / f"brainles{i}" / "t1ce.nii.gz")))
            print(f"run {i}: btpipe {ours[-1]:.1f} s, brainles {theirs[-1]:.1f} s, "
                  f"NCC {scores[-1]}", flush=True)
    ratio = statistics.median(theirs) / statistics.median(ours)
    ncc = {key: statistics.median(run[key] for run in scores) for key in scores[0]}
    print(f"brainles / btpipe time {ratio:.2f}; median NCC {ncc}")
    if args.record:
        better = ncc["btpipe"] >= ncc["brainles"]
        body = "\n".join([
            f"Date {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
            f"{os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f} at the end; "
            f"`bench/bench_brainles.py`: tcga-fg-6692 native (with skull, 0.9x0.9x5.5 mm), "
            f"all four sequences -> SRI24 1 mm, each tool in a fresh process, runs "
            f"alternating, median of {args.repeats}. brainles-preprocessing "
            f"{BRAINLES_VERSION} in its own venv: btpipe's skull-on SRI24 (`t1_head.nii`), "
            "ANTs registrator, atlas correction, no brain extraction (btpipe also "
            "skull-strips with deepbet; default config, head to head). NCC of every run "
            "against `t1c_bet`, median (range).", "",
            "| tool | wall (s, median) | runs (s) | T1ce NCC where the reference and both "
            "outputs have brain | same inside the reference's HD-BET mask |",
            "|---|---:|---|---:|---:|",
            _row("btpipe (default config)", ours, scores, "btpipe"),
            _row("brainles-preprocessing", theirs, scores, "brainles"), "",
            f"Time ratio brainles / btpipe **{ratio:.2f}** (aim >= 2: "
            f"{'met' if ratio >= 2 else 'not met'}); NCC btpipe - brainles where both have "
            f"brain **{ncc['btpipe'] - ncc['brainles']:+.3f}** (aim >= 0: "
            f"{'met' if better else 'not met'}). Inside the HD-BET mask "
            f"{ncc['btpipe_hdbet'] - ncc['brainles_hdbet']:+.3f}: there btpipe's mask zeroes "
            "voxels brainles keeps, and the reference itself is zero on about 12k voxels "
            "(docs/preprocessing.md).",
        ])
        replace_section(REPO / "docs/benchmarks.md", "Preprocessing against brainles-preprocessing",
                        body)


if __name__ == "__main__":
    main()
