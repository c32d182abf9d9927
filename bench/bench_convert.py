"""DICOM conversion throughput: `btpipe convert` against plain dcm2niix.

    python bench/bench_convert.py [--repeats 5] [--demo DIR | --no-demo]
                                  [--profile] [--record]

Both tools convert the same folders with the same dcm2niix binary and flags
(`btpipe.ingest.dcm2niix_process.dcm2niix_command`); the baseline is that command
alone, btpipe is the full CLI (`btpipe convert IN OUT`: interpreter start-up,
pydicom header pass, dcm2niix, geometry checks, de-identified copies, series
table as parquet + csv). The two tools alternate inside each repetition (and
swap who goes first every repetition) so both see the same machine load.

Cases (converted by as few calls per tool as possible, since both tools walk
any nesting; the leaf folders are copied side by side into scratch folders):
  - real:    every leaf series folder of dcm_qa_siemens/In and dicom2nifti
             (failing/ skipped: those are error-handling cases, not throughput)
  - demo:    one synthetic demo subject (`btpipe demo DIR --subjects 1`):
             4 series, 448 single-frame files, the pipeline's typical input
  - startup: the smallest real series alone: the fixed cost per invocation
Figures: median wall time over the repetitions, series/s, MB/s (input DICOM
bytes / wall), overhead = (btpipe - plain) / plain. --profile runs cProfile
on the in-process `convert_dicom_dir` of the largest case and prints the top
functions. --record writes the section "DICOM conversion" of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from record import replace_section  # noqa: E402

from btpipe.ingest.dcm2niix_process import dcm2niix_binary, dcm2niix_command  # noqa: E402

DATA = Path(os.environ.get("BTPIPE_TESTDATA", "/work/shared/data")) / "dicom"
ROOTS = (DATA / "dcm_qa_siemens" / "In", DATA / "dicom2nifti")
SKIP = ("failing",)
OVERHEAD_LIMIT = 0.20
BTPIPE = Path(sys.executable).with_name("btpipe")


def is_dicom(path: Path) -> bool:
    """True for a Part-10 file (the 'DICM' magic after the 128-byte preamble)."""
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def leaf_series_folders(roots=ROOTS, skip=SKIP) -> list[Path]:
    """Folders holding DICOM files and no sub-folders, outside `skip`."""
    leaves = []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            rel = Path(folder).relative_to(root).parts
            if any(part in skip for part in rel) or dirs:
                continue
            if any(is_dicom(Path(folder) / n) for n in names):
                leaves.append(Path(folder))
    return sorted(leaves)


def dicom_bytes(folders) -> tuple[int, int]:
    """(number of DICOM files, their total size) under the folders."""
    files = [Path(d) / n for folder in folders for d, _, names in os.walk(folder)
             for n in names if is_dicom(Path(d) / n)]
    return len(files), sum(f.stat().st_size for f in files)


def series_uids(folder: Path) -> set[str]:
    import pydicom

    return {str(pydicom.dcmread(f, stop_before_pixels=True).get("SeriesInstanceUID", ""))
            for f in sorted(folder.iterdir()) if f.is_file() and is_dicom(f)}


def gather(folders, dest: Path) -> list[Path]:
    """Copy leaf folders side by side into batches under `dest`, one input tree
    per call. A folder whose series UID is already in a batch (dicom2nifti's
    five compressed copies of one series) opens the next batch: in one call
    dcm2niix would merge them into one series."""
    batches: list[tuple[Path, set]] = []
    for folder in folders:
        uids = series_uids(folder)
        batch = next((b for b in batches if not b[1] & uids), None)
        if batch is None:
            batch = (dest / f"batch-{len(batches) + 1}", set())
            batches.append(batch)
        batch[1].update(uids)
        shutil.copytree(folder, batch[0] / "__".join(folder.parts[-3:]))
    return [b[0] for b in batches]


def make_demo(dest: Path) -> Path | None:
    """One demo subject's DICOM folder, or None if `btpipe demo` fails."""
    proc = subprocess.run([str(BTPIPE), "demo", str(dest), "--subjects", "1"],
                          capture_output=True, text=True)
    subjects = sorted((dest / "dicom").glob("*")) if proc.returncode == 0 else []
    if not subjects:
        print(f"btpipe demo failed, demo case skipped: {proc.stderr.strip()[-300:]}")
        return None
    return subjects[0]


# --- the two tools -------------------------------------------------------------

def run_plain(src: Path, out: Path) -> int:
    """Plain dcm2niix with btpipe's flags but gzipped output (-z y), which is
    what a user running it by hand gets; returns the number of NIfTI files."""
    out.mkdir(parents=True)
    cmd = dcm2niix_command(src, out)
    cmd[cmd.index("-z") + 1] = "y"
    subprocess.run(cmd, check=True, capture_output=True)
    return len(list(out.glob("*.nii.gz")))


def run_btpipe(src: Path, out: Path) -> int:
    """The `btpipe convert` CLI; returns the number of NIfTI files it wrote."""
    subprocess.run([str(BTPIPE), "convert", str(src), str(out)], check=True,
                   capture_output=True)
    return len(list(out.glob("*.nii.gz")))


TOOLS = {"dcm2niix": run_plain, "btpipe": run_btpipe}


def timed(tool, sources, scratch: Path) -> tuple[float, int]:
    """Total wall and NIfTI count of one tool over a case's input trees."""
    wall, n_out = 0.0, 0
    for src in sources:
        out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
        start = time.perf_counter()
        n_out += TOOLS[tool](src, out)
        wall += time.perf_counter() - start
        shutil.rmtree(out.parent)
    return wall, n_out


def measure(cases: dict, repeats: int, scratch: Path) -> list[dict]:
    """Median wall per case and tool; the tools alternate, swapping order."""
    walls = {(c, t): [] for c in cases for t in TOOLS}
    outputs = {}
    for rep in range(repeats):
        order = list(TOOLS) if rep % 2 == 0 else list(TOOLS)[::-1]
        for case, info in cases.items():
            for tool in order:
                wall, n_out = timed(tool, info["src"], scratch)
                walls[(case, tool)].append(wall)
                outputs[(case, tool)] = n_out
        print(f"repetition {rep + 1}/{repeats} done", flush=True)
    rows = []
    for case, info in cases.items():
        plain = statistics.median(walls[(case, "dcm2niix")])
        for tool in TOOLS:
            wall = statistics.median(walls[(case, tool)])
            rows.append({"case": case, "tool": tool, "series": info["series"],
                         "files": info["files"], "mb": info["bytes"] / 1e6,
                         "nifti_out": outputs[(case, tool)], "wall_s": wall,
                         "min_s": min(walls[(case, tool)]), "max_s": max(walls[(case, tool)]),
                         "series_per_s": info["series"] / wall,
                         "mb_per_s": info["bytes"] / 1e6 / wall,
                         "overhead": (wall - plain) / plain})
    return rows


# Steps of convert_dicom_dir named in the recorded breakdown: (label, module file, function).
STEPS = (("waiting for dcm2niix", "dcm2niix_process.py", "wait"),
         ("pydicom header pass (while dcm2niix runs)", "convert.py", "scan_headers"),
         ("waiting for the de-identified NIfTI copies (read, blank, gzip, write; "
          "in threads)", "_base.py", "result"))


def step_times(stats: pstats.Stats) -> dict:
    """Cumulative seconds of the STEPS functions in a profile (main thread only:
    cProfile does not see the copy threads, hence the wait on their results)."""
    by_name = {(Path(func[0]).name, func[2]): entry[3] for func, entry in stats.stats.items()}
    return {label: by_name.get((module, name), 0.0) for label, module, name in STEPS}


def breakdown_md(name: str, wall: float, steps: dict) -> str:
    parts = "; ".join(f"{label} {sec:.1f} s ({100 * sec / wall:.0f}%)"
                      for label, sec in steps.items())
    return (f"Where btpipe's time goes (cProfile of the in-process `convert_dicom_dir` + "
            f"table on {name}, no interpreter start-up): {wall:.1f} s in all; {parts}.")


def profile(src: Path, scratch: Path, top: int = 18) -> tuple[str, str]:
    """cProfile of the in-process conversion + table writing (no start-up):
    (printable top-`top` listing, one-line breakdown for the record)."""
    from btpipe import io as bio
    from btpipe.ingest import convert_dicom_dir

    out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    table = convert_dicom_dir(src, out, workers=os.cpu_count() or 1)
    bio.write_parquet(out / "series.parquet", table)
    bio.write_csv(out / "series.csv", table)
    prof.disable()
    wall = time.perf_counter() - start
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    shutil.rmtree(out.parent)
    return buf.getvalue(), breakdown_md(src.name, wall, step_times(stats))


# --- report --------------------------------------------------------------------

def table_md(rows) -> str:
    lines = ["| case | series | DICOM files | MB | tool | wall s (median; min-max) | "
             "series/s | MB/s | overhead |", "|---|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        over = "-" if r["tool"] == "dcm2niix" else f"{100 * r['overhead']:+.0f}%"
        lines.append(f"| {r['case']} | {r['series']} | {r['files']} | {r['mb']:.1f} | "
                     f"{r['tool']} | {r['wall_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) | "
                     f"{r['series_per_s']:.2f} | {r['mb_per_s']:.2f} | {over} |")
    return "\n".join(lines)


def load_note(load) -> str:
    """How busy the machine was: 1-min load average at start and end of the run."""
    busy = max(load) > 1.5
    return (f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end on 2 cores: "
            + ("**shared with other jobs**, so absolute times are inflated and noisy."
               if busy else "no other job was running."))


def pigz_note() -> str:
    """Which compressor the baseline's -z y used (dcm2niix prefers pigz, all cores)."""
    if shutil.which("pigz"):
        return "The baseline's `-z y` compresses with pigz (found on PATH, all cores)."
    return ("The baseline's `-z y` compresses with dcm2niix's internal zlib on one core "
            "(no pigz on PATH; with pigz it would use all cores).")


def section(rows, repeats, cases, load, breakdown="") -> str:
    version = subprocess.run([dcm2niix_binary(), "--version"], capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    flags = " ".join(dcm2niix_command("IN", "OUT")[1:]).replace("-z n", "-z y")
    over = {r["case"]: r["overhead"] for r in rows if r["tool"] == "btpipe"}
    verdict = ", ".join(f"{c} {100 * o:+.0f}% ({'within' if o <= OVERHEAD_LIMIT else 'over'} "
                        f"the {OVERHEAD_LIMIT:.0%} target)" for c, o in over.items())
    described = "\n".join(f"- **{c}**: {info['what']}" for c, info in cases.items())
    return f"""`python bench/bench_convert.py --record` ({datetime.date.today()}; median of
{repeats} repetitions; 2-core VM, Python {platform.python_version()}, dcm2niix {version}).
{load_note(load)} The two tools alternate within each repetition (order
swapped every repetition) so both see the same machine load.

Baseline: plain `dcm2niix {flags}` (the same binary and flags btpipe uses, but with gzip: btpipe runs dcm2niix with `-z n` and compresses each de-identified file once).
btpipe: the full CLI `btpipe convert IN OUT` (Python start-up, dcm2niix started before
the heavy imports, pydicom header pass while it runs, geometry checks, de-identified
NIfTI/JSON copies compressed by `--threads` = {os.cpu_count()} threads (the default: all
cores), series.parquet + series.csv). {pigz_note()} One call per tool per input tree;
MB = input DICOM bytes.

{described}

{table_md(rows)}

Overhead of btpipe over plain dcm2niix: {verdict}.

{breakdown}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--demo", type=Path, default=None,
                        help="an existing demo subject DICOM folder (else one is generated)")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        scratch = Path(tmp)
        leaves = leaf_series_folders()
        n_files, n_bytes = dicom_bytes(leaves)
        cases = {"real": {"src": gather(leaves, scratch / "real"), "series": len(leaves),
                          "files": n_files, "bytes": n_bytes,
                          "what": ""}}
        cases["real"]["what"] = (f"{len(leaves)} leaf series folders of dcm_qa_siemens/In and "
                                 "dicom2nifti (failing/ skipped), copied side by side into "
                                 f"{len(cases['real']['src'])} input trees (one call each; "
                                 "the compressed copies of one series UID go to separate trees)")
        demo = None if args.no_demo else (args.demo or make_demo(scratch / "demo"))
        if demo is not None:
            series = [d for d in sorted(demo.iterdir()) if d.is_dir()]
            n_files, n_bytes = dicom_bytes([demo])
            cases["demo"] = {"src": [demo], "series": len(series), "files": n_files,
                             "bytes": n_bytes, "what": "one synthetic subject from "
                             "`btpipe demo --subjects 1` (t1, t1ce, t2, flair)"}
        smallest = min(leaves, key=lambda f: dicom_bytes([f])[1])
        n_files, n_bytes = dicom_bytes([smallest])
        cases["startup"] = {"src": [smallest], "series": 1, "files": n_files, "bytes": n_bytes,
                            "what": f"the smallest real series alone "
                                    f"({smallest.relative_to(DATA)}): the fixed cost per call"}
        rows = measure(cases, args.repeats, scratch)
        print(table_md(rows))
        for r in rows:
            print(f"{r['case']}: {r['tool']} wrote {r['nifti_out']} NIfTI files "
                  f"for {r['series']} series")
        breakdown = ""
        if args.profile:
            largest = cases["demo" if "demo" in cases else "real"]["src"][0]
            listing, breakdown = profile(largest, scratch)
            print(listing + "\n" + breakdown)
        load = (load_start[0], os.getloadavg()[0])
        if args.record:
            replace_section(REPO / "docs" / "benchmarks.md", "DICOM conversion",
                            section(rows, args.repeats, cases, load, breakdown))
            print("recorded in docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
