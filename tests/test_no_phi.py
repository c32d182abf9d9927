"""No personal data in any output: the demo DICOM carries planted patient
name, ID, birth date, institution, accession number and referring physician;
none of them may appear in any file under results/ (NIfTI headers, JSON,
Parquet, HTML, PNG, logs, model files), compressed or not."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from btpipe.demo.generate import PLANTED_PHI

pytestmark = pytest.mark.integration


def _needles() -> list[bytes]:
    values = {str(v) for v in PLANTED_PHI.values()}
    # Name parts too: a scrubber that drops 'DEMO^PLANTEDNAME' but keeps 'PLANTEDNAME' leaks.
    values |= {part for v in list(values) for part in v.split("^") if len(part) >= 6}
    return sorted({v.lower().encode() for v in values})


def _payloads(path: Path):
    """Every byte stream a reader could see in this file, decompressed."""
    data = path.read_bytes()
    yield data
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                yield name.encode()
                yield archive.read(name)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        yield " ".join(map(str, frame.columns)).encode()
        yield frame.astype(str).to_csv(index=False).encode()


def test_planted_phi_is_really_in_the_demo_dicom(tiny_run):
    dicom = next((tiny_run["workdir"] / "demo" / "dicom").rglob("*.dcm")).read_bytes().lower()
    assert any(needle in dicom for needle in _needles())


def test_no_planted_phi_anywhere_under_results(tiny_run):
    needles = _needles()
    files = [p for p in tiny_run["results"].rglob("*") if p.is_file()]
    assert len(files) > 100
    leaks = []
    for path in files:
        for payload in _payloads(path):
            lowered = payload.lower()
            leaks += [(str(path), n.decode()) for n in needles if n in lowered]
    assert not leaks, leaks[:10]
