"""DICOM folder -> one de-identified NIfTI + JSON sidecar per series, plus a table.

dcm2niix does the conversion (exact: no cropping, no reorientation beyond its
default row flip, original integer scaling). btpipe adds what dcm2niix does not
report as structured data: a pydicom pass over the headers that groups files by
series and checks each series' geometry (orientation changing between slices,
slices sheared against the image plane, uneven spacing / missing slices,
truncated pixel data), so no defect passes silently.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .. import io
from ..errors import InputError
from . import deid
from .classify import NOT_CONVERTED
from .dcm2niix_process import Dcm2niixRun

SERIES_COLUMNS = (
    "series_number", "series_description", "protocol_name", "vendor", "modality",
    "image_type", "acquisition_type", "repetition_time", "echo_time", "inversion_time",
    "flip_angle", "contrast_agent", "contrast_bolus_agent", "dims", "spacing",
    "voxel_volume", "n_volumes", "orientation", "n_slices", "file", "sidecar", "warnings",
)

# dcm2niix stdout lines worth keeping: its warnings and errors, tilt notes.
_NOTE_RE = re.compile(r"^(warning|error)|tilt|unable|missing|varies|not large enough", re.I)
_CONVERT_RE = re.compile(r"^Convert \d+ DICOM as (?P<path>.+?) \((?P<dims>[\dx]+)\)\s*$")
_NAME_RE = re.compile(r"^(?P<uid>[0-9.]+)_(?P<series>\d+)(?P<suffix>.*)$")
_FAILED_FILE_RE = re.compile(r"(?:File not large enough to store image data|Unable to \w+[^:]*):"
                             r"\s*(?P<path>\S.*)$", re.I)
# Geometry tolerances: angles in degrees, spacing as a relative deviation.
SHEAR_TOLERANCE_DEG = 0.5
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 0.1


# --- header scan -------------------------------------------------------------

def _frames_geometry(ds):
    """[(orientation 6-vector, position 3-vector)] for every frame of a file."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is not None and ipp is not None:
        return [(np.asarray(iop, float), np.asarray(ipp, float))]
    frames = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_iop = None
    if shared:
        orient = shared[0].get("PlaneOrientationSequence")
        if orient:
            shared_iop = orient[0].get("ImageOrientationPatient")
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        pos = frame.get("PlanePositionSequence")
        orient = frame.get("PlaneOrientationSequence")
        f_iop = orient[0].get("ImageOrientationPatient") if orient else shared_iop
        f_ipp = pos[0].get("ImagePositionPatient") if pos else None
        if f_iop is not None and f_ipp is not None:
            frames.append((np.asarray(f_iop, float), np.asarray(f_ipp, float)))
    return frames


def _truncation(path, ds):
    """A message if the file holds fewer pixel bytes than its header promises.

    Reads only the header: the pixel element's declared length and file offset
    (pydicom defers large values) against the expected size and the file size.
    Compressed (encapsulated) data is left to dcm2niix's decoder.
    """
    if "PixelData" not in ds:
        return None
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        return None
    elem = ds.get_item("PixelData", keep_deferred=True)
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                    * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return None
    length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    have = []
    if length is not None and length != 0xFFFFFFFF:
        have.append(int(length))
    if tell is not None:
        have.append(os.path.getsize(path) - int(tell))
    if have and min(have) < expected:
        return f"truncated DICOM file {Path(path).name}: {min(have)} of {expected} pixel bytes"
    return None


def scan_headers(dicom_dir) -> tuple[dict, set]:
    """Group DICOM files by SeriesInstanceUID and collect geometry and PHI.

    Returns ({uid: {"files": [...], "frames": [(iop, ipp)], "truncated": [...],
    "series_number": n}}, PHI tokens). Non-DICOM files are ignored.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    series = defaultdict(lambda: {"files": [], "frames": [], "truncated": [],
                                  "series_number": None})
    tokens = set()
    for root, _dirs, names in os.walk(dicom_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                ds = pydicom.dcmread(path, defer_size=1024)
            except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
                continue
            uid = str(ds.get("SeriesInstanceUID", "")) or f"nouid-{ds.get('SeriesNumber')}"
            entry = series[uid]
            entry["files"].append(path)
            entry["series_number"] = ds.get("SeriesNumber", entry["series_number"])
            try:
                entry["frames"] += _frames_geometry(ds)
            except (TypeError, ValueError):
                pass
            problem = _truncation(path, ds)
            if problem:
                entry["truncated"].append(problem)
            tokens |= deid.phi_tokens(ds)
    return dict(series), tokens


def geometry_warnings(frames) -> list[str]:
    """Human-readable geometry problems of one series (empty list if none).

    Checks: slice orientation changing within the series, slice positions that
    do not step along the slice normal (gantry tilt or inconsistent slice
    orientation), and uneven slice spacing (missing slices).
    """
    if len(frames) < 2:
        return []
    warnings = []
    iops = np.stack([f[0] for f in frames])
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
        warnings.append("ImageOrientationPatient varies between slices of one series")
        return warnings  # positions along one normal are meaningless then
    row, col = iops[0][:3], iops[0][3:]
    normal = np.cross(row, col)
    positions = np.unique(np.round(np.stack([f[1] for f in frames]), 4), axis=0)
    if len(positions) < 2:
        return warnings
    order = np.argsort(positions @ normal)
    positions = positions[order]
    steps = np.diff(positions, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    unit = steps / np.where(lengths[:, None] > 0, lengths[:, None], 1)
    cosines = np.clip(np.abs(unit @ normal), 0, 1)
    shear = float(np.degrees(np.arccos(cosines.min())))
    if shear > SHEAR_TOLERANCE_DEG:
        warnings.append(f"slice positions are {shear:.1f} deg off the slice normal "
                        "(gantry tilt or inconsistent slice orientation)")
    along = steps @ normal
    median = float(np.median(along))
    if median > 0 and np.abs(along - median).max() > SPACING_TOLERANCE * median:
        warnings.append(f"uneven slice spacing ({along.min():.2f}-{along.max():.2f} mm): "
                        "missing slices?")
    return warnings


def slice_count(img, frames) -> int:
    """Number of slices: the image axis closest to the DICOM slice normal.

    dcm2niix rotates some 3D acquisitions and tiles mosaics, so the 3rd
    NIfTI axis is not always the slice axis; without header geometry it is
    assumed to be.
    """
    shape = img.shape
    if len(shape) < 3:
        return 1
    if not frames:
        return int(shape[2])
    iop = frames[0][0]
    normal = np.cross(iop[:3], iop[3:]) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    axes = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    return int(shape[int(np.argmax(np.abs(normal @ axes)))])


# --- dcm2niix ----------------------------------------------------------------

def notes_per_output(lines, out_dir) -> tuple[dict, list[str]]:
    """dcm2niix notes assigned to the output they precede/follow.

    dcm2niix prints a series' warnings before its 'Convert N DICOM as X' line
    (tilt notes just after it). Returns ({output stem: [notes]}, notes that no
    output claimed, e.g. unreadable files).
    """
    per_output, pending, last = defaultdict(list), [], None
    for line in lines:
        line = line.strip()
        match = _CONVERT_RE.match(line)
        if match:
            last = Path(match.group("path")).name
            per_output[last] += pending
            pending = []
        elif "Gantry Tilt Correction" in line and last is not None:
            per_output[last].append(line)
        elif _NOTE_RE.search(line):
            pending.append(line)
    return dict(per_output), pending


def notes_to_owning_series(notes, orphan_notes, headers):
    """Move every note that names an input file to the series holding that file.

    dcm2niix prints a note about an unreadable file before the next series it
    converts, whichever that is; left there, a truncated T2 file would mark the
    FLAIR as faulty too. Returns (notes per output without them, {series uid:
    [file notes]}, orphan notes that name no known file).
    """
    owner = {str(path): uid for uid, info in headers.items() for path in info["files"]}

    def owner_of(note):
        return next((uid for path, uid in owner.items() if path in note), None)

    by_series, kept, orphans = defaultdict(list), {}, []
    for stem, lines in notes.items():
        kept[stem] = []
        for line in lines:
            uid = owner_of(line)
            (kept[stem] if uid is None else by_series[uid]).append(line)
    for line in orphan_notes:
        uid = owner_of(line)
        (orphans if uid is None else by_series[uid]).append(line)
    return kept, dict(by_series), orphans


def _sidecar_for(folder: Path, stem: str, base: str) -> dict:
    """The dcm2niix sidecar of an output; derived files (_Tilt_1, _Eq_1) have
    none of their own and share the one of the file they came from."""
    candidates = [stem, re.sub(r"(_(Eq|Tilt)_\d+)+$", "", stem), base]
    for name in candidates:
        path = folder / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
    return {}


# --- the table ---------------------------------------------------------------

def _ms(seconds):
    return None if seconds is None else float(seconds) * 1000.0


def _contrast(meta) -> bool:
    agent = str(meta.get("ContrastBolusAgent") or "").strip().upper()
    return agent not in ("", "NONE", "NO", "N", "0")


def image_geometry(img) -> dict:
    """dims, spacing, voxel volume, axcodes, slice and volume counts of an image."""
    shape = tuple(int(s) for s in img.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return {"dims": list(shape), "spacing": [round(z, 6) for z in zooms],
            "voxel_volume": float(np.prod(zooms)),
            "n_volumes": int(np.prod(shape[3:])) if len(shape) > 3 else 1,
            "orientation": "".join(nib.aff2axcodes(img.affine)),
            "n_slices": shape[2] if len(shape) > 2 else 1}


def series_row(meta, img, file=None, sidecar=None, warnings=()) -> dict:
    """One series-table row from a (raw) dcm2niix sidecar and the NIfTI image."""
    row = {
        "series_number": meta.get("SeriesNumber"),
        "series_description": meta.get("SeriesDescription"),
        "protocol_name": meta.get("ProtocolName"),
        "vendor": meta.get("Manufacturer"),
        "modality": meta.get("Modality"),
        "image_type": "\\".join(meta.get("ImageType") or []) or None,
        "acquisition_type": meta.get("MRAcquisitionType"),
        "repetition_time": _ms(meta.get("RepetitionTime")),
        "echo_time": _ms(meta.get("EchoTime")),
        "inversion_time": _ms(meta.get("InversionTime")),
        "flip_angle": meta.get("FlipAngle"),
        "contrast_agent": _contrast(meta),
        "contrast_bolus_agent": meta.get("ContrastBolusAgent"),
        **image_geometry(img),
        "file": None if file is None else str(file),
        "sidecar": None if sidecar is None else str(sidecar),
        "warnings": list(warnings),
    }
    return row


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in SERIES_COLUMNS})


def _scrub_row(row, tokens) -> dict:
    for key in ("series_description", "protocol_name", "vendor", "image_type",
                "contrast_bolus_agent"):
        row[key] = deid.scrub_text(row[key], tokens)
    row["warnings"] = [w if not deid.contains_phi(w, tokens) else "(warning removed: PHI)"
                       for w in row["warnings"]]
    return row


def _relative_notes(notes, dicom_dir, tmp_dir):
    """Notes with absolute input/temp paths shortened (paths may name people)."""
    out = []
    for note in notes:
        note = note.replace(str(tmp_dir), "").replace(str(dicom_dir), "<dicom_dir>")
        out.append(note)
    return out


def _final_stem(series_number, suffix, taken) -> str:
    suffix = re.sub(r"[^A-Za-z0-9_-]", "", suffix or "")
    stem = f"series-{series_number if series_number is not None else 'x'}{suffix}"
    k, candidate = 1, stem
    while candidate in taken:
        k += 1
        candidate = f"{stem}-{k}"
    taken.add(candidate)
    return candidate


@dataclass
class _Output:
    """One file dcm2niix wrote, and its de-identified copy under way."""

    nii: Path  # in the temporary folder
    stem: str
    base: str  # the stem without derived-file suffixes (_Tilt_1, _Eq_1)
    uid: str | None
    meta: dict  # dcm2niix's sidecar, raw
    final: str  # the file stem in out_dir
    copy: Future


def _queue_copies(run, out_dir: Path, pool) -> tuple[int, list[str], list[_Output]]:
    """Wait for dcm2niix, then queue every output's de-identified, compressed copy.
    Blanking NIfTI header text needs nothing from the header scan, so the copies
    compress while the scan still runs. Returns (exit code, output lines, outputs)."""
    code, lines = run.wait()
    outputs, taken = [], set()
    for nii in sorted(run.folder.glob("*.nii")):
        stem = nii.name[:-len(".nii")]
        match = _NAME_RE.match(stem)
        base = f"{match.group('uid')}_{match.group('series')}" if match else stem
        meta = _sidecar_for(run.folder, stem, base)
        final = _final_stem(meta.get("SeriesNumber"), match.group("suffix") if match else "",
                            taken)
        copy = pool.submit(deid.write_clean_nifti, nii, out_dir / f"{final}.nii.gz")
        outputs.append(_Output(nii, stem, base, match.group("uid") if match else None, meta,
                               final, copy))
    return code, lines, outputs


def _output_warnings(out: _Output, notes, file_notes, info, dicom_dir, tmp) -> list[str]:
    """dcm2niix's notes on one output plus btpipe's geometry checks of its series."""
    own = notes.get(out.stem, []) + notes.get(out.base, []) if out.stem != out.base else \
        notes.get(out.stem, [])
    warnings = _relative_notes(own + file_notes.get(out.uid, []), dicom_dir, tmp)
    geometry = geometry_warnings(info.get("frames", []))
    if "_Eq_" in out.stem:
        warnings.append("slices resampled by dcm2niix to equal spacing (_Eq)")
    if "_Tilt_" in out.stem:
        # The sheared stack was resampled: its shear warning no longer applies.
        geometry = [w for w in geometry if "off the slice normal" not in w]
        geometry.append("gantry tilt corrected by dcm2niix (resampled onto an "
                        "orthogonal grid)")
    elif any("gantry tilt" in w.lower() for w in warnings):
        geometry.append("uncorrected gantry-tilt geometry (sheared); "
                        "a tilt-corrected copy exists")
    return warnings + geometry + info.get("truncated", [])


def convert_dicom_dir(dicom_dir, out_dir, subject=None, workers=1, run=None) -> pd.DataFrame:
    """Convert every DICOM series under `dicom_dir` (any nesting) into `out_dir`.

    Writes `series-{N}{suffix}.nii.gz` + `.json` (de-identified) per output of
    dcm2niix and returns the series table (SERIES_COLUMNS; repetition/echo/
    inversion times in ms; `warnings` a list of strings per row). Series that
    dcm2niix could not convert appear with file None and a warning.
    Raises InputError when the folder is missing or yields no image at all.
    `workers` threads de-identify and compress the outputs (zlib releases the
    GIL); `run` is a Dcm2niixRun already started on the same folders (the CLI
    starts it before its heavy imports), else one is started here.
    """
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    if not dicom_dir.is_dir():
        raise InputError("DICOM folder not found", subject=subject, path=dicom_dir)
    # Leaving the block stops dcm2niix first (run is entered last), then waits for the threads.
    with ThreadPoolExecutor(1) as waiter, ThreadPoolExecutor(max(1, int(workers))) as pool, \
            run or Dcm2niixRun(dicom_dir, out_dir) as run:
        # dcm2niix is a separate process: the pydicom header pass runs meanwhile,
        # and so do the copies of its outputs once it is done.
        queued = waiter.submit(_queue_copies, run, out_dir, pool)
        headers, tokens = scan_headers(dicom_dir)
        code, lines, outputs = queued.result()
        tmp = run.folder
        notes, orphan_notes = notes_per_output(lines, tmp)
        notes, file_notes, orphan_notes = notes_to_owning_series(notes, orphan_notes,
                                                                 headers)
        rows = []
        for out in outputs:
            info = headers.get(out.uid, {})
            warnings = _output_warnings(out, notes, file_notes, info, dicom_dir, tmp)
            img = nib.load(str(out.nii))
            n_slices = slice_count(img, info.get("frames", []))
            if n_slices < 3:
                warnings.append(f"only {n_slices} slice(s): not a volume")
            clean_meta, _removed = deid.scrub_sidecar(out.meta, tokens)
            nii_out, json_out = out_dir / f"{out.final}.nii.gz", out_dir / f"{out.final}.json"
            io.write_json(json_out, clean_meta)
            row = series_row(out.meta, img, nii_out, json_out, dict.fromkeys(warnings))
            row["n_slices"] = n_slices
            rows.append(_scrub_row(row, tokens))
        converted_uids = {out.uid for out in outputs}
        unclaimed = orphan_notes + [n for uid, lines in file_notes.items()
                                    if uid not in converted_uids for n in lines]
        rows += _unconverted_rows(headers, converted_uids, unclaimed, dicom_dir, tmp, tokens)
        for out in outputs:  # before the temporary folder goes; raises a failed copy's error
            out.copy.result()
    if not any(r["file"] for r in rows):
        detail = "; ".join(_relative_notes(unclaimed, dicom_dir, "")) or \
            f"dcm2niix exit code {code}"
        what = "no DICOM files found" if not headers else "no DICOM series could be converted"
        all_files = [f for info in headers.values() for f in info["files"]]
        bad = _first_failed_file(unclaimed, all_files) or dicom_dir
        raise InputError(f"{what} ({detail})", subject=subject, path=bad)
    rows.sort(key=lambda r: (r["series_number"] is None, r["series_number"] or 0,
                             r["file"] is None, r["file"] or ""))
    table = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    for col in ("series_number", "n_slices", "n_volumes"):
        table[col] = table[col].astype("Int64")
    return table


def _first_failed_file(notes, files=()):
    """The first input file a dcm2niix note names (known files, else by pattern)."""
    for note in notes:
        for path in files:
            if str(path) in note:
                return str(path)
        match = _FAILED_FILE_RE.search(note)
        if match:
            return match.group("path").strip()
    return None


def _unconverted_rows(headers, converted_uids, orphan_notes, dicom_dir, tmp, tokens):
    """Rows for series the header scan found but dcm2niix wrote nothing for."""
    rows = []
    for uid, info in headers.items():
        if uid in converted_uids:
            continue
        notes = [n for n in orphan_notes if _first_failed_file([n], info["files"])] \
            or orphan_notes
        warnings = [NOT_CONVERTED] + info["truncated"] + \
            _relative_notes(notes, dicom_dir, tmp)
        row = {c: None for c in SERIES_COLUMNS}
        row.update(series_number=None if info["series_number"] is None
                   else int(info["series_number"]), contrast_agent=False,
                   warnings=list(dict.fromkeys(warnings)))
        row = _scrub_row(row, tokens)
        rows.append(row)
    return rows
