"""Lesion-wise scoring of one BraTS-size case: btpipe against the official package.

    python bench/bench_lesionwise.py [--algorithm isen-20] [--repeats 5] [--record]

Case: tcga-fg-6692's segmentation by a BraTS 2020 algorithm against the
fusion of five (../shared/data/mri/tcga-fg-6692/reference/segmentations;
240x240x155, 1 mm, labels 0/1/2/4). Each run is a fresh process, the two
tools alternating (order swapped every repetition) so both see the same load:

* btpipe: ``btpipe score --pred P --gt G --lesionwise --json OUT`` (start-up,
  reading both files, the legacy whole-region metrics and the lesion-wise
  ones, JSON written);
* btpipe, lesion-wise only: the same through ``score_files(...,
  metric_sets=("lesionwise",))`` in a fresh interpreter (no legacy metrics:
  the work the official command does);
* official: ``brats-evaluate --config gli --ref_path R --pred_path P
  --summary_json OUT`` (brats-evaluation's own command line) on the same maps
  relabelled to its values (ET 4 -> 3; relabelling not timed).

Also printed: the lesion-wise step alone, in-process (`score_files` with the
lesionwise set only), and a check that both tools give the same numbers.
Target: btpipe's command at most 10 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from record import replace_section  # noqa: E402

SEGS = REPO.parent / "shared/data/mri/tcga-fg-6692/reference/segmentations"
TARGET_S = 10.0
HEADING = "Lesion-wise scoring (one BraTS-size case)"
LESIONWISE_ONLY = ("import sys; from btpipe.segment.metrics import score_files; "
                   "score_files(sys.argv[1], sys.argv[2], metric_sets=('lesionwise',), "
                   "json_out=sys.argv[3])")
TOOLS = ("btpipe", "btpipe_lw", "official")


def timed(cmd: list[str]) -> dict:
    """Wall seconds and peak RSS (MB) of one command, its output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024}


def official_inputs(pred: Path, ref: Path, tmp: Path) -> tuple[Path, Path]:
    """The maps in the official glioma values, named so its CLI pairs them."""
    import nibabel as nib
    import numpy as np

    folders = []
    for kind, src in (("pred", pred), ("ref", ref)):
        folder = tmp / kind
        folder.mkdir()
        img = nib.load(str(src))
        data = np.asarray(img.dataobj).astype(np.uint8)
        nib.save(nib.Nifti1Image(np.where(data == 4, 3, data), img.affine, img.header),
                 str(folder / "BraTS-GLI-00000-000.nii.gz"))
        folders.append(folder)
    return folders[0], folders[1]


def same_numbers(ours_json: Path, official_json: Path) -> float:
    """Largest difference between the tools' lesion-wise values (WT, TC, ET)."""
    ours = json.loads(ours_json.read_text())
    theirs = json.loads(official_json.read_text())["metrics"][0]
    keys = {"lw_dice": "sq_dsc", "lw_hd95": "sq_hd95", "lw_nsd": "sq_nsd",
            "lesions_tp": "tp", "lesions_fp": "fp", "lesions_fn": "fn"}
    return max(abs(ours[r][k] - theirs[r.lower()][v]) for r in ("WT", "TC", "ET")
               for k, v in keys.items())


def in_process_seconds(pred: Path, ref: Path, repeats: int) -> list[float]:
    from btpipe.segment.metrics import score_files

    score_files(pred, ref, metric_sets=("lesionwise",))          # imports, evaluator
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_files(pred, ref, metric_sets=("lesionwise",))
        runs.append(time.perf_counter() - start)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algorithm", default="isen-20")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    pred, ref = SEGS / f"{args.algorithm}.nii.gz", SEGS / "fusion_simple.nii.gz"
    if not (pred.exists() and ref.exists()):
        sys.exit(f"missing {pred} or {ref}")
    bin_dir = Path(sys.executable).parent
    load_before = os.getloadavg()[0]
    runs = {tool: [] for tool in TOOLS}
    with tempfile.TemporaryDirectory(prefix="btpipe-bench-lw-") as tmp:
        tmp = Path(tmp)
        pred_dir, ref_dir = official_inputs(pred, ref, tmp)
        commands = {
            "btpipe": [str(bin_dir / "btpipe"), "score", "--pred", str(pred), "--gt", str(ref),
                       "--lesionwise", "--json", str(tmp / "btpipe.json")],
            "btpipe_lw": [sys.executable, "-c", LESIONWISE_ONLY, str(pred), str(ref),
                          str(tmp / "btpipe_lw.json")],
            "official": [str(bin_dir / "brats-evaluate"), "--config", "gli", "--ref_path",
                         str(ref_dir), "--pred_path", str(pred_dir),
                         "--summary_json", str(tmp / "official.json")]}
        for i in range(args.repeats):
            for tool in (TOOLS if i % 2 == 0 else TOOLS[::-1]):
                runs[tool].append(timed(commands[tool]))
                print(tool, runs[tool][-1], flush=True)
        max_diff = max(same_numbers(tmp / f"{tool}.json", tmp / "official.json")
                       for tool in ("btpipe", "btpipe_lw"))
    step = in_process_seconds(pred, ref, args.repeats)
    load_after = os.getloadavg()[0]
    med = {tool: statistics.median(r["wall_s"] for r in rs) for tool, rs in runs.items()}
    rss = {tool: max(r["rss_mb"] for r in rs) for tool, rs in runs.items()}
    ratio = {tool: med["official"] / med[tool] for tool in ("btpipe", "btpipe_lw")}
    print(f"median {', '.join(f'{t} {m:.2f} s' for t, m in med.items())}; ratio official / "
          f"btpipe {ratio['btpipe']:.2f}, / lesion-wise only {ratio['btpipe_lw']:.2f}; "
          f"lesion-wise step {statistics.median(step):.2f} s; "
          f"max difference {max_diff:.2e}; load {load_before:.1f} -> {load_after:.1f}")
    if args.record:
        record(args, runs, med, rss, ratio, step, max_diff, (load_before, load_after))


def record(args, runs, med, rss, ratio, step, max_diff, load) -> None:
    from importlib.metadata import version

    lines = [
        f"`python bench/bench_lesionwise.py --record` ({datetime.date.today()}; "
        f"{platform.node()}, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; panoptica {version('panoptica')}, brats-evaluation "
        f"{version('brats-evaluation')}). 1-min load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after (other jobs shared the machine when it is above 2)"
        f"{f', run at nice {os.nice(0)}' if os.nice(0) else ''}. "
        f"Case tcga-fg-6692, `{args.algorithm}` against `fusion_simple` (240x240x155, 1 mm). "
        f"Median of {args.repeats} fresh processes per tool, the tools alternating.", "",
        "| tool | command | wall s (median) | runs (s) | peak RSS MB |",
        "|---|---|---:|---|---:|",
        f"| btpipe | `btpipe score --lesionwise --json` (legacy + lesion-wise) | "
        f"{med['btpipe']:.2f} | {[round(r['wall_s'], 2) for r in runs['btpipe']]} | "
        f"{rss['btpipe']:.0f} |",
        f"| btpipe, lesion-wise only | `score_files(..., metric_sets=('lesionwise',))` in a "
        f"fresh `python -c` | {med['btpipe_lw']:.2f} | "
        f"{[round(r['wall_s'], 2) for r in runs['btpipe_lw']]} | {rss['btpipe_lw']:.0f} |",
        f"| official | `brats-evaluate --config gli` (6 label groups) | {med['official']:.2f} | "
        f"{[round(r['wall_s'], 2) for r in runs['official']]} | {rss['official']:.0f} |", "",
        f"Ratio official / btpipe: **{ratio['btpipe']:.2f}** for the command, "
        f"**{ratio['btpipe_lw']:.2f}** for the lesion-wise work alone (above 1: btpipe "
        f"faster). btpipe's command against the 10 s target: "
        f"**{'met' if med['btpipe'] <= TARGET_S else 'not met'}** ({med['btpipe']:.2f} s). "
        f"The lesion-wise step alone (in-process, files read, no start-up): median "
        f"{statistics.median(step):.2f} s (runs {[round(s, 2) for s in step]}). Largest "
        f"difference between the two tools' lesion-wise values: {max_diff:.1e}.", "",
        "Both commands spend their time in the same panoptica calls; the official command "
        "also scores the NETC, SNFH and resection-cavity labels on their own, btpipe also "
        "computes the legacy whole-region metrics."]
    replace_section(REPO / "docs/benchmarks.md", HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
