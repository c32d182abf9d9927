"""BraTS folders -> samples-sheet rows (one subject per case folder).

BraTS 2020/2021 name files `<case>_t1.nii.gz, _t1ce, _t2, _flair, _seg`;
BraTS 2023+ `<case>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg`. Both are recognised
per case, so a folder mixing releases still works. The optional clinical
table (BraTS 2020 survival_info.csv) is joined on the subject id.

The label convention follows from the naming where the naming settles it
(`convention_for_case`): BraTS 2017-2021 files (`BraTS..._t1ce`) label 1 NCR,
2 ED, 4 ET (brats2021). BraTS 2023+ adult glioma, metastasis and meningioma
files (`BraTS-GLI|MET|MEN-<n>-<n>-t1c`) label 1 NETC, 2 SNFH, 3 ET, and since
2024 also 4 = resection cavity (brats2024). The names do not tell 2023 from
2024 cases, and need not: a 2023 file never holds 4, so brats2024 reads both
correctly. Other 2023+ challenges are left to the user: BraTS 2024 pediatric
files (BraTS-PED) reuse 1-4 for other tissues under the same naming.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .. import SEQUENCES
from ..errors import ConfigError
from ..labels import CONVENTIONS

# suffix (as it appears after the case id) -> sheet column
BRATS_SUFFIXES = {
    "2021": {"_t1": "t1", "_t1ce": "t1ce", "_t2": "t2", "_flair": "flair", "_seg": "seg"},
    "2023": {"-t1n": "t1", "-t1c": "t1ce", "-t2w": "t2", "-t2f": "flair", "-seg": "seg"},
}
_NIFTI_RE = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")
# (naming, case id pattern, label convention): where BraTS file names settle the labels.
CONVENTION_BY_NAMING = (
    ("2021", re.compile(r"^brats\d*_", re.I), "brats2021"),
    ("2023", re.compile(r"^brats-(gli|met|men)-\d+-\d+$", re.I), "brats2024"),
)
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


def _split_brats_name(name: str) -> tuple[str, str] | None:
    """'BraTS-GLI-00001-000-t1c.nii.gz' -> ('2023', 'BraTS-GLI-00001-000'); None if not BraTS-style."""
    match = _NIFTI_RE.match(name)
    if not match:
        return None
    stem = match.group("stem")
    for naming, suffixes in BRATS_SUFFIXES.items():
        for suffix in suffixes:
            if stem.lower().endswith(suffix) and len(stem) > len(suffix):
                return naming, stem[:-len(suffix)]
    return None


def convention_for_case(path) -> str | None:
    """Label convention that a BraTS file's name settles, or None where it does not.

    Any file of a case will do (image or `seg`); see the module docstring for
    the rule. None for other names (DICOM folders, own naming, BraTS-PED, ...).
    """
    split = _split_brats_name(Path(str(path)).name)
    if split is None:
        return None
    naming, case_id = split
    return next((conv for rule_naming, pattern, conv in CONVENTION_BY_NAMING
                 if rule_naming == naming and pattern.match(case_id)), None)


def detect_convention(paths) -> str:
    """The one label convention that the names of `paths` settle (e.g. every
    case's t1ce and seg); ConfigError naming a file when a name settles none
    or two names settle different ones."""
    chosen: dict[str, str] = {}
    for path in paths:
        conv = convention_for_case(path)
        if conv is None:
            raise ConfigError(f"labels: auto cannot choose a label convention from the name "
                              f"of {path}; set labels to one of {sorted(CONVENTIONS)} or a mapping")
        chosen.setdefault(conv, str(path))
    if not chosen:
        raise ConfigError("labels: auto found no file names to choose a label convention from")
    if len(chosen) > 1:
        found = "; ".join(f"{conv} from {path}" for conv, path in sorted(chosen.items()))
        raise ConfigError(f"labels: auto found conflicting BraTS namings ({found}); "
                          "set labels explicitly")
    return next(iter(chosen))


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
    when `clinical` names a table or a list of tables (see :func:`join_clinical`).
    `brats_dir` may also be one case folder.
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
        frame = join_clinical(frame, clinical_paths(clinical))
    return frame.reset_index(drop=True)


def clinical_paths(clinical) -> list[str]:
    """The ``clinical`` setting as a list of table paths (one path or a list; None: none)."""
    if not clinical:
        return []
    return [str(clinical)] if isinstance(clinical, (str, Path)) else [str(c) for c in clinical]


def join_clinical(frame: pd.DataFrame, paths) -> pd.DataFrame:
    """Left-join the clinical tables (stacked; e.g. a training and a validation table) on
    the subject id. Column ``_clinical_row`` says whether any table had a row for the
    subject: a missing row and an empty survival cell are different reasons to leave a
    subject out of survival modelling."""
    tables = [read_clinical(p).assign(_clinical_row=True) for p in paths]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["subject"])
    dupes = sorted(set(table.loc[table["subject"].duplicated(), "subject"]))
    if dupes:
        raise ConfigError(f"clinical tables {', '.join(map(str, paths))}: subject(s) {dupes[:5]} appear "
                          "more than once")
    extra = [c for c in table.columns if c != "subject"]
    frame = frame.merge(table, on="subject", how="left")
    for col in extra:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    frame["_clinical_row"] = frame["_clinical_row"].map(lambda v: v is True)
    return frame
