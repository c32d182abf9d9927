"""One subject's ingest: DICOM folder or NIfTI files -> the four sequences.

Everything is produced in a temporary folder inside `out_dir` and moved into
place (one rename per file) only when the whole subject succeeded, so out_dir
never holds half a subject.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .. import SEQUENCES, io
from ..errors import ConfigError, InputError
from . import deid
from .classify import TIE_BREAK, classify_series, load_rules
from .convert import SERIES_COLUMNS, convert_dicom_dir, image_geometry

MISSING_SEQUENCE_MODES = ("fail", "continue")
_OPTIONAL_INPUTS = ("seg", "brain_mask")


# --- NIfTI inputs -------------------------------------------------------------

def load_volume(path, subject, what):
    """Load a NIfTI file as a 3D image (a singleton 4th dim is squeezed).

    Returns (nibabel image, data array, list of notes). Raises InputError for
    a missing/unreadable file, a non-3D image or NaN/Inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", subject=subject, path=path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{what} cannot be read as NIfTI ({type(exc).__name__}: {exc})",
                         subject=subject, path=path) from exc
    notes = []
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        notes.append(f"{what}: singleton 4th dimension removed")
    if data.ndim != 3:
        raise InputError(f"{what} is not a 3D image (shape {tuple(data.shape)})",
                         subject=subject, path=path)
    if data.dtype.kind == "f":
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(f"{what} has {bad} NaN/Inf voxels", subject=subject, path=path)
    return img, data, notes


def clean_nifti_bytes(img, data) -> bytes:
    """A fresh NIfTI-1 image of `data` with `img`'s geometry and no text fields.

    Unscaled data keep their dtype; data nibabel had to scale become float32.
    """
    on_disk = img.get_data_dtype()
    if data.dtype != on_disk and data.dtype.kind == "f":
        data = data.astype(np.float32)
    out = nib.Nifti1Image(data, img.affine)
    header = img.header
    qcode = int(header["qform_code"]) if "qform_code" in header else 1
    scode = int(header["sform_code"]) if "sform_code" in header else 1
    out.set_qform(img.get_qform() if qcode else img.affine, code=qcode or 1)
    out.set_sform(img.get_sform() if scode else img.affine, code=scode or 1)
    out.header.set_xyzt_units(*header.get_xyzt_units())
    return deid.blank_nifti_text(out.to_bytes())


def ingest_nifti(subject, seq, path, work: Path) -> tuple[dict, list[str]]:
    """Check one NIfTI input and write a clean copy + minimal sidecar in `work`."""
    img, data, notes = load_volume(path, subject, seq)
    io.write_bytes(work / f"{seq}.nii.gz", deid.gzip_bytes(clean_nifti_bytes(img, data)))
    clean = nib.load(str(work / f"{seq}.nii.gz"))
    geometry = image_geometry(clean)
    io.write_json(work / f"{seq}.json", {"Source": str(path), "SourceFormat": "nifti",
                                         "Shape": geometry["dims"],
                                         "Spacing": geometry["spacing"],
                                         "Orientation": geometry["orientation"]})
    row = {c: None for c in SERIES_COLUMNS}
    row.update(geometry, file=f"{seq}.nii.gz", sidecar=f"{seq}.json", warnings=notes,
               contrast_agent=seq == "t1ce", series_description=Path(path).name)
    return row, notes


# --- DICOM inputs -------------------------------------------------------------

def _series_label(row) -> str:
    text = row.get("series_description") or row.get("protocol_name") or "?"
    what = row.get("sequence") or "-"
    reason = row.get("skip_reason")
    folder = row.get("folder")
    where = f" in {folder}" if isinstance(folder, str) and folder else ""
    return f"{row.get('series_number')} '{text}'{where} ({what}{'; ' + reason if reason else ''})"


# Header fields read by the folder scan: identity is compared, never written.
_SCAN_TAGS = ["SeriesInstanceUID", "SeriesNumber", "StudyInstanceUID", *deid.PHI_KEYWORDS]


def _patient_key(ds):
    """Whose file this is, for comparison only: PatientID, else the normalised
    PatientName, else None (anonymised to nothing: unknown, not compared)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return "id:" + pid
    name = re.sub(r"[\^=\s]+", " ", str(ds.get("PatientName", "") or "")).strip().upper()
    return "name:" + name if name else None


def _folder_label(rel: Path, tokens) -> str:
    text = "." if str(rel) in ("", ".") else rel.as_posix()
    return text if deid.scrub_text(text, tokens) is not None else "(folder name withheld: PHI)"


def _identity_groups(series, label) -> dict:
    """{(patient, study): [series labels]}; unknown (blank) identities join any group."""
    patients = {p for e in series.values() for p in e["patients"]} - {None}
    studies = {s for e in series.values() for s in e["studies"]} - {""}
    groups = {}
    for entry in sorted(series.values(), key=lambda e: sorted(map(str, e["folders"]))):
        keys = [(p, st) for p in (entry["patients"] - {None} or patients or {None})
                for st in (entry["studies"] - {""} or studies or {""})]
        for key in keys:
            groups.setdefault(key, []).append(label(entry))
    return groups


def scan_dicom_folder(subject, dicom_dir) -> dict:
    """Header pass over a subject's DICOM folder, before any conversion.

    Returns {"folders": {series number: [folders, relative to dicom_dir]},
    "notes": [warnings]}: files that are not DICOM are named in a note (they
    are ignored, never silently), except the workflow's own marker files
    (`io.is_pipeline_marker`: Snakemake's .snakemake_timestamp in the demo's
    DICOM folders), which are no input problem. Raises InputError naming the series
    (numbers and folders, never the patient) when the folder mixes patients
    or studies (sessions): their series must not be combined into one subject.
    """
    import pydicom

    dicom_dir = Path(dicom_dir)
    series, not_dicom, tokens = {}, [], set()
    for root, dirs, names in os.walk(dicom_dir):
        dirs[:] = [d for d in dirs if not io.is_pipeline_marker(d)]
        for name in sorted(n for n in names if not io.is_pipeline_marker(n)):
            path = Path(root) / name
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SCAN_TAGS)
                uid = str(ds.SeriesInstanceUID)
            except Exception:  # noqa: BLE001 - any reader failure: not a usable DICOM file
                not_dicom.append(path.relative_to(dicom_dir).as_posix())
                continue
            tokens |= deid.phi_tokens(ds)
            entry = series.setdefault(uid, {"number": ds.get("SeriesNumber"), "folders": set(),
                                            "patients": set(), "studies": set()})
            entry["folders"].add(path.parent.relative_to(dicom_dir))
            entry["patients"].add(_patient_key(ds))
            entry["studies"].add(str(ds.get("StudyInstanceUID", "")))
    notes = []
    if not_dicom:
        shown = ", ".join(not_dicom[:5]) + (f" and {len(not_dicom) - 5} more"
                                            if len(not_dicom) > 5 else "")
        notes.append(f"{len(not_dicom)} file(s) that are not readable DICOM images were ignored: {shown}")
    if not series:
        raise InputError("no DICOM files found" + (f" ({notes[0]})" if notes else ""),
                         subject=subject, path=dicom_dir)

    def label(entry):
        folders = ", ".join(sorted(_folder_label(f, tokens) for f in entry["folders"]))
        return f"series {entry['number']} ({folders})"

    groups = _identity_groups(series, label)
    if len(groups) > 1:
        patients = {p for p, _ in groups}
        what = (f"{len(patients)} patients (PatientID/PatientName differ)" if len(patients) > 1
                else f"{len(groups)} studies (sessions) of one patient")
        listing = "; ".join(f"{'patient' if len(patients) > 1 else 'study'} {i}: "
                            f"{', '.join(labels)}" for i, labels in enumerate(groups.values(), 1))
        raise InputError(f"DICOM folder mixes {what}, so it is not ingested (one session of "
                         f"one patient per subject; point dicom_dir at one study): {listing}",
                         subject=subject, path=dicom_dir)
    folders = {}
    for entry in series.values():
        number = None if entry["number"] is None else int(entry["number"])
        folders.setdefault(number, set()).update(_folder_label(f, tokens)
                                                 for f in entry["folders"])
    return {"folders": {k: sorted(v) for k, v in folders.items()}, "notes": notes}


def ingest_dicom(subject, dicom_dir, work: Path, rules, scan=None) -> pd.DataFrame:
    """Convert and classify a subject's DICOM folder; returns the classified table.

    `scan` (from `scan_dicom_folder`) adds each series' folder to the table
    (column `folder`, used in messages, not written) and its notes to errors.
    """
    scan = scan or {"folders": {}, "notes": []}
    table = convert_dicom_dir(dicom_dir, work / "series", subject=subject)
    table = classify_series(table, rules)
    table["folder"] = [", ".join(scan["folders"].get(None if pd.isna(n) else int(n), []))
                       for n in table["series_number"]]
    if not table["chosen_as"].notna().any():
        seen = "; ".join(_series_label(r) for r in table.to_dict("records"))
        raise InputError(f"no usable DICOM series (series seen: {seen})"
                         + "".join(f"; {n}" for n in scan["notes"]),
                         subject=subject, path=dicom_dir)
    for row in table[table["chosen_as"].notna()].to_dict("records"):
        seq = row["chosen_as"]
        load_volume(row["file"], subject, f"{seq} (series {row['series_number']})")
        os.replace(row["file"], work / f"{seq}.nii.gz")
        sidecar = io.read_json(row["sidecar"])
        sidecar["BtpipeIngest"] = {"sequence": seq, "series_number": row["series_number"],
                                   "match_by": row["match_by"],
                                   "warnings": list(row["warnings"] or [])}
        io.write_json(work / f"{seq}.json", sidecar)
    return table


# --- the subject --------------------------------------------------------------

def _check_inputs(subject, inputs):
    for key in ("dicom_dir", *SEQUENCES, *_OPTIONAL_INPUTS):
        path = inputs.get(key)
        if path and not Path(path).exists():
            kind = "folder" if key == "dicom_dir" else "file"
            raise InputError(f"{key} {kind} not found", subject=subject, path=path)
    if not inputs.get("dicom_dir") and not any(inputs.get(s) for s in SEQUENCES):
        raise InputError("no input: give dicom_dir or NIfTI paths t1, t1ce, t2, flair",
                         subject=subject)


def _series_summary(row) -> dict:
    return {"series_number": None if pd.isna(row.get("series_number")) else
            int(row["series_number"]),
            "series_description": row.get("series_description"),
            "sequence": row.get("sequence"), "chosen_as": row.get("chosen_as"),
            "skip_reason": row.get("skip_reason"),
            "warnings": list(row.get("warnings") or [])}


def _finish_table(table: pd.DataFrame) -> pd.DataFrame:
    """Series table as written to series.parquet: file names relative to nifti/."""
    table = table.drop(columns=["folder"], errors="ignore")
    table["file"] = [f"{c}.nii.gz" if isinstance(c, str) else None for c in table["chosen_as"]]
    table["sidecar"] = [f"{c}.json" if isinstance(c, str) else None for c in table["chosen_as"]]
    table["warnings"] = [list(w) if isinstance(w, (list, tuple, np.ndarray)) else []
                         for w in table["warnings"]]
    for col in ("dims", "spacing"):
        table[col] = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
                      for v in table[col]]
    return table


def ingest_subject(subject, inputs, out_dir, rules_path, missing_sequence="fail") -> dict:
    """Ingest one subject into `out_dir` (results/subjects/{subject}/nifti).

    inputs: dict with dicom_dir, t1, t1ce, t2, flair, seg, brain_mask, space
    (paths or None), as `btpipe.samples.subject_inputs` returns. NIfTI paths
    given for a sequence take precedence over the DICOM series for it.
    Writes {seq}.nii.gz + {seq}.json for each sequence found and
    series.parquet; returns the ingest report (a dict; the caller writes
    ingest.json). Raises InputError (subject and file named) for bad input,
    ConfigError for a bad `missing_sequence` or rules file.
    """
    if missing_sequence not in MISSING_SEQUENCE_MODES:
        raise ConfigError(f"ingest.missing_sequence must be one of {MISSING_SEQUENCE_MODES}, "
                          f"not {missing_sequence!r}")
    rules = load_rules(rules_path)
    _check_inputs(subject, inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    space = inputs.get("space") or "native"
    warnings = []
    with tempfile.TemporaryDirectory(prefix=".ingest-", dir=out_dir) as tmp:
        work = Path(tmp)
        nifti_rows = []
        for seq in SEQUENCES:
            if inputs.get(seq):
                row, notes = ingest_nifti(subject, seq, inputs[seq], work)
                row.update(sequence=seq, match_by="sample sheet", chosen_as=seq, skip_reason=None)
                nifti_rows.append(row)
                warnings += notes
        table = pd.DataFrame(nifti_rows, columns=[*SERIES_COLUMNS, "sequence", "match_by",
                                                  "chosen_as", "skip_reason"])
        if inputs.get("dicom_dir") and not all(inputs.get(s) for s in SEQUENCES):
            scan = scan_dicom_folder(subject, inputs["dicom_dir"])
            warnings += scan["notes"]
            dicom = ingest_dicom(subject, inputs["dicom_dir"], work,
                                 _without(rules, [s for s in SEQUENCES if inputs.get(s)]), scan)
            table = pd.concat([table, dicom], ignore_index=True) if len(table) else dicom
        chosen = {r["chosen_as"]: r for r in table.to_dict("records")
                  if isinstance(r["chosen_as"], str)}
        missing = [s for s in SEQUENCES if s not in chosen]
        if missing:
            seen = "; ".join(_series_label(r) for r in table.to_dict("records")) or "none"
            message = f"no series for sequence(s) {', '.join(missing)} (series seen: {seen})"
            # Folder notes (files ignored as not DICOM) often explain the gap.
            message += "".join(f"; {w}" for w in warnings if "not readable DICOM images" in w)
            if missing_sequence == "fail":
                raise InputError(message, subject=subject,
                                 path=inputs.get("dicom_dir") or inputs.get(missing[0]))
            warnings.append(message)
        for row in table.to_dict("records"):
            if isinstance(row["chosen_as"], str):
                warnings += [f"{row['chosen_as']}: {w}" for w in (row["warnings"] or [])
                             if not str(w).startswith(row["chosen_as"])]
        final = _finish_table(table)
        io.write_parquet(work / "series.parquet", final)
        outputs = [f"{s}.{ext}" for s in chosen for ext in ("nii.gz", "json")]
        for name in [*outputs, "series.parquet"]:
            os.replace(work / name, out_dir / name)
    return _report(subject, space, inputs, rules, final, chosen, missing, warnings)


def _without(rules, sequences):
    """Rules with some sequences left out (those given as NIfTI files)."""
    if not sequences:
        return rules
    trimmed = dict(rules)
    trimmed["order"] = [s for s in rules["order"] if s not in sequences]
    trimmed["sequences"] = {k: v for k, v in rules["sequences"].items() if k not in sequences}
    return trimmed


def _report(subject, space, inputs, rules, table, chosen, missing, warnings) -> dict:
    records = table.to_dict("records")
    sequences = {}
    for seq, row in chosen.items():
        sequences[seq] = {
            "file": f"{seq}.nii.gz", "sidecar": f"{seq}.json",
            "source": "nifti" if row.get("match_by") == "sample sheet" else "dicom",
            "series_number": None if pd.isna(row.get("series_number"))
            else int(row["series_number"]),
            "series_description": row.get("series_description"),
            "match_by": row.get("match_by"),
            "dims": list(row["dims"]) if row.get("dims") is not None else None,
            "spacing": list(row["spacing"]) if row.get("spacing") is not None else None,
            "orientation": row.get("orientation"),
        }
    return {
        "subject": subject,
        "space": space,
        "source": "dicom" if inputs.get("dicom_dir") else "nifti",
        "rules": rules["source"],
        "tie_break": TIE_BREAK,
        "n_series": len(records),
        "sequences": sequences,
        "missing_sequences": missing,
        "series": [_series_summary(r) for r in records],
        "skipped": [{"series_number": s["series_number"],
                     "series_description": s["series_description"],
                     "reason": s["skip_reason"]}
                    for s in map(_series_summary, records) if s["skip_reason"]],
        "optional_inputs": {k: inputs.get(k) for k in _OPTIONAL_INPUTS if inputs.get(k)},
        "warnings": list(dict.fromkeys(warnings)),
    }
