"""BraTS folders -> samples-sheet rows (one subject per case folder).

BraTS 2020/2021 name files `<case>_t1.nii.gz, _t1ce, _t2, _flair, _seg`;
BraTS 2023+ `<case>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg`. Both are recognised
per case, so a folder mixing releases still works. The optional clinical
table (BraTS 2020 survival_info.csv) is joined on the subject id.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .. import SEQUENCES
from ..errors import ConfigError

# suffix (as it appears after the case id) -> sheet column
BRATS_SUFFIXES = {
    "2021": {"_t1": "t1", "_t1ce": "t1ce", "_t2": "t2", "_flair": "flair", "_seg": "seg"},
    "2023": {"-t1n": "t1", "-t1c": "t1ce", "-t2w": "t2", "-t2f": "flair", "-seg": "seg"},
}
_NIFTI_RE = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")
# clinical column (lower-cased) -> sheet column
CLINICAL_COLUMNS = {
    "brats20id": "subject", "brats21id": "subject", "brats_id": "subject",
    "subject": "subject", "id": "subject", "age": "age",
    "survival_days": "survival_days", "survival": "survival_days",
    "extent_of_resection": "extent_of_resection", "resection": "extent_of_resection",
}


def _case_files(case_dir: Path) -> tuple[str | None, dict]:
    """(case id, {column: path}) for the BraTS files of one case folder.

    The case id is the files' common prefix (e.g. BraTS-GLI-00001-000), which
    must equal the folder name up to letter case (folders are often lower-cased).
    """
    found, case_id = {}, None
    for path in sorted(case_dir.iterdir()):
        match = _NIFTI_RE.match(path.name)
        if not match or not path.is_file():
            continue
        stem = match.group("stem")
        for suffixes in BRATS_SUFFIXES.values():
            for suffix, column in suffixes.items():
                prefix = stem[:-len(suffix)]
                if stem.lower().endswith(suffix) and prefix.lower() == case_dir.name.lower():
                    found[column], case_id = str(path), prefix
    return case_id, found


def _is_case(found: dict) -> bool:
    return all(seq in found for seq in SEQUENCES)


def read_clinical(path) -> pd.DataFrame:
    """Clinical CSV/TSV -> columns subject, age, survival_days, extent_of_resection, ...

    Text is kept as text ('ALIVE (361 days later)', 'NA' as a category); age
    becomes a number where it is one.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"clinical table {path} not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    renamed = {}
    for col in frame.columns:
        target = CLINICAL_COLUMNS.get(col.strip().lower())
        renamed[col] = target if target and target not in renamed.values() else col.strip()
    frame = frame.rename(columns=renamed)
    if "subject" not in frame.columns:
        raise ConfigError(f"clinical table {path}: no subject id column "
                          f"(one of {sorted(k for k, v in CLINICAL_COLUMNS.items() if v == 'subject')})")
    frame["subject"] = frame["subject"].str.strip()
    if "age" in frame.columns:
        frame["age"] = pd.to_numeric(frame["age"].replace("", None), errors="coerce")
    for col in frame.columns:
        if col not in ("subject", "age"):
            frame[col] = frame[col].map(lambda v: None if str(v).strip() == "" else str(v).strip())
    return frame


def discover_brats(brats_dir, clinical=None) -> pd.DataFrame:
    """One row per BraTS case folder under `brats_dir` (searched recursively).

    Columns: subject, t1, t1ce, t2, flair, seg (None if absent), space='atlas',
    plus the clinical columns (age, survival_days, extent_of_resection, ...)
    when `clinical` names a table. `brats_dir` may also be one case folder.
    Raises ConfigError if the folder is missing or holds no complete case.
    """
    brats_dir = Path(brats_dir)
    if not brats_dir.is_dir():
        raise ConfigError(f"brats_dir {brats_dir} not found")
    rows = []
    for case_dir in sorted({brats_dir, *(p for p in brats_dir.rglob("*") if p.is_dir())}):
        case_id, found = _case_files(case_dir)
        if _is_case(found):
            rows.append({"subject": case_id, **{s: found[s] for s in SEQUENCES},
                         "seg": found.get("seg"), "space": "atlas"})
    if not rows:
        raise ConfigError(f"brats_dir {brats_dir}: no case folder with all of "
                          f"{', '.join(SEQUENCES)} in BraTS 2020/2021 or 2023 naming")
    frame = pd.DataFrame(rows, columns=["subject", *SEQUENCES, "seg", "space"])
    if clinical:
        table = read_clinical(clinical)
        extra = [c for c in table.columns if c != "subject"]
        frame = frame.merge(table, on="subject", how="left")
        for col in extra:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return frame.reset_index(drop=True)
