"""Write a demo MR series as classic single-frame DICOM (pydicom 3).

One file per slice (IM_0001.dcm, ...), Explicit VR Little Endian, MR Image
Storage, with the geometry (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing, SliceThickness, SpacingBetweenSlices) taken from the same
`Grid` that produced the pixels, so converters reproduce the native grid.
Personal data from PLANTED_PHI is planted in every header on purpose: the
ingest stage must strip it, and tests look for these strings downstream.

Vendor details that converters rely on are written as the scanners write
them, so dcm2niix converts the demo without a warning and a real one stands
out: a Siemens 2D series stamps each slice with its own AcquisitionTime (the
slice's moment in an interleaved TR), and a GE series carries its protocol
data block (0025,101B), a gzip-compressed text of `KEY "value"` lines.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage,
                         generate_uid)

from .acquisition import Grid, Protocol

# Distinctive on purpose: later stages' tests scan their outputs for these strings.
PLANTED_PHI = {
    "PatientName": "DEMO^PLANTEDNAME",
    "PatientID": "PLANTEDID-7731",
    "PatientBirthDate": "19380412",
    "InstitutionName": "PLANTED GENERAL HOSPITAL",
    "AccessionNumber": "PLANTEDACC0042",
    "ReferringPhysicianName": "PLANTEDDOC^REFERRER",
}


def uid(*parts) -> str:
    """A UID fixed by its parts (seed, index, series, ...): reruns give the same UIDs."""
    return generate_uid(entropy_srcs=["btpipe-demo", *map(str, parts)])


def _ds(value) -> str:
    """A decimal string (VR DS) of at most 16 characters."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text if len(text) <= 16 else f"{float(value):.10g}"


def tm(seconds: float) -> str:
    """A DICOM time (VR TM, HHMMSS.FFFFFF) `seconds` after midnight."""
    micro = int(round(float(seconds) * 1e6)) % (86400 * 10**6)
    whole, frac = divmod(micro, 10**6)
    return f"{whole // 3600:02d}{whole % 3600 // 60:02d}{whole % 60:02d}.{frac:06d}"


def _tm_seconds(text: str) -> float:
    return int(text[:2]) * 3600 + int(text[2:4]) * 60 + float(text[4:])


def interleaved_order(n_slices: int) -> list[int]:
    """Slice indices in the order a Siemens interleaved 2D acquisition excites
    them: odd counts start at the first slice, even counts at the second."""
    first = 0 if n_slices % 2 else 1
    return [*range(first, n_slices, 2), *range(1 - first, n_slices, 2)]


def slice_acquisition_times(protocol: Protocol, n_slices: int, manufacturer: str,
                            series_time: str) -> list[str]:
    """AcquisitionTime of each slice. A Siemens 2D series stamps each slice with
    the moment it was excited, spread over one TR in interleaved order
    (dcm2niix derives SliceTiming from them; with equal stamps it warns
    "Siemens MoCo? Bogus slice timing"). Every other series carries its start
    on every slice."""
    if manufacturer != "SIEMENS" or protocol.mr_type != "2D":
        return [series_time] * n_slices
    start, step = _tm_seconds(series_time), protocol.tr / 1000.0 / n_slices
    slot = {k: i for i, k in enumerate(interleaved_order(n_slices))}
    return [tm(start + slot[k] * step) for k in range(n_slices)]


_GE_PLANES = {"ax": "AXIAL", "sag": "SAGITTAL", "cor": "CORONAL"}


def ge_protocol_block(protocol: Protocol) -> bytes:
    """GE's protocol data block (0025,101B): a little-endian length, then the
    gzip-compressed protocol text (dcm2niix reads PSEQ, SLICEORDER, VIEWORDER
    from it and warns "Missing GE protocol data block" without it)."""
    text = "".join(f'{key} "{value}"\n' for key, value in (
        ("ENTRY", "Head First"), ("POSITION", "Supine"), ("ANATOMY", "BRAIN"),
        ("PLANE", _GE_PLANES[protocol.plane]), ("SEDESC", protocol.description),
        ("PSEQ", protocol.sequence_name.upper()),
        ("IOPT", protocol.scan_options.replace("\\", ", ")),
        ("SLICEORDER", "1" if protocol.mr_type == "2D" else "0"), ("VIEWORDER", "1")))
    block = gzip.compress(text.encode("ascii"), mtime=0)
    block = struct.pack("<I", len(block)) + block
    return block + b"\x00" * (len(block) % 2)


def _add_study(ds: Dataset, study: dict) -> None:
    """Patient and study level attributes, shared by every series of a subject."""
    for key, value in PLANTED_PHI.items():
        setattr(ds, key, value)
    ds.PatientSex = study["sex"]
    ds.PatientAge = f"{int(study['age']):03d}Y"
    ds.PatientWeight = _ds(study["weight_kg"])
    ds.StudyInstanceUID = study["study_uid"]
    ds.FrameOfReferenceUID = study["frame_uid"]
    ds.StudyDate = study["date"]
    ds.StudyTime = study["time"]
    ds.StudyID = "1"
    ds.StudyDescription = "MRI BRAIN W/WO CONTRAST"
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.Manufacturer = study["manufacturer"]
    ds.ManufacturerModelName = study["model"]
    ds.SoftwareVersions = study["software"]
    ds.MagneticFieldStrength = _ds(study["field"])
    ds.StationName = "DEMOMR01"
    ds.DeviceSerialNumber = "00000"


def _add_series(ds: Dataset, protocol: Protocol, grid: Grid, series: dict) -> None:
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series["uid"]
    ds.SeriesNumber = protocol.series_number
    ds.SeriesDescription = protocol.description
    ds.ProtocolName = protocol.description
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series["date"]
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series["time"]
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = protocol.scanning_sequence.split("\\")
    ds.SequenceVariant = protocol.sequence_variant.split("\\")
    if protocol.scan_options:
        ds.ScanOptions = protocol.scan_options.split("\\")
    ds.MRAcquisitionType = protocol.mr_type
    ds.SequenceName = protocol.sequence_name
    ds.RepetitionTime = _ds(protocol.tr)
    ds.EchoTime = _ds(protocol.te)
    if protocol.ti is not None:
        ds.InversionTime = _ds(protocol.ti)
    ds.FlipAngle = _ds(protocol.flip)
    ds.EchoTrainLength = protocol.echo_train
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(42.577478 * float(ds.MagneticFieldStrength))
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.PixelBandwidth = _ds(series["bandwidth"])
    ds.SliceThickness = _ds(grid.slice_thickness)
    ds.SpacingBetweenSlices = _ds(grid.slice_spacing)
    ds.PixelSpacing = [_ds(grid.pixel[0]), _ds(grid.pixel[1])]
    ds.ImageOrientationPatient = [_ds(v) for v in (*grid.rowdir, *grid.coldir)]
    ds.AcquisitionMatrix = [0, grid.shape[2], grid.shape[1], 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.PercentPhaseFieldOfView = _ds(100.0 * grid.shape[1] / grid.shape[2])
    if protocol.sequence == "t1ce":
        ds.ContrastBolusAgent = series["agent"]
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = _ds(series["contrast_ml"])
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = _ds(series["rescale_slope"])
    ds.RescaleType = "US"
    ds.WindowCenter = _ds(series["window"][0])
    ds.WindowWidth = _ds(series["window"][1])
    if str(ds.Manufacturer).startswith("GE"):
        ds.private_block(0x0025, "GEMS_SERS_01", create=True).add_new(
            0x1B, "OB", ge_protocol_block(protocol))


_PREAMBLE = b"\x00" * 128 + b"DICM"
# Per-slice elements, in tag order, with their VR and padding byte.
_PER_SLICE = {"SOPInstanceUID": (0x00080018, b"UI", b"\x00"),
              "AcquisitionTime": (0x00080032, b"TM", b" "),
              "InstanceNumber": (0x00200013, b"IS", b" "),
              "ImagePositionPatient": (0x00200032, b"DS", b" "),
              "SliceLocation": (0x00201041, b"DS", b" "),
              "PixelData": (0x7FE00010, b"OW", b"\x00")}
_MEDIA_SOP = 0x00020003


def _encode(ds: Dataset) -> bytes:
    """Elements of `ds`, Explicit VR Little Endian, as pydicom writes them."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _element(tag: int, vr: bytes, value, pad: bytes) -> bytes:
    """One Explicit VR Little Endian element (the few VRs written per slice)."""
    if isinstance(value, (list, tuple)):
        value = "\\".join(value)
    data = value if isinstance(value, bytes) else str(value).encode("ascii")
    if len(data) % 2:
        data += pad
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW"):
        return struct.pack("<HH2s2xI", group, elem, vr, len(data)) + data
    return struct.pack("<HH2sH", group, elem, vr, len(data)) + data


class _SliceEncoder:
    """Encodes a series' slices fast: pydicom encodes the elements shared by
    every slice once (in runs between the per-slice elements); the per-slice
    elements and the file meta group length are packed here. The bytes equal
    pydicom's `save_as(..., enforce_file_format=True)` (a test checks)."""

    def __init__(self, ds: Dataset):
        meta = Dataset()
        for elem in ds.file_meta:
            if elem.tag.element != 0x0000:
                meta.add(elem)
        self.meta_before = _encode(Dataset({e.tag: e for e in meta if e.tag < _MEDIA_SOP}))
        self.meta_after = _encode(Dataset({e.tag: e for e in meta if e.tag > _MEDIA_SOP}))
        self.parts = []   # bytes (shared run) or a keyword (per-slice element)
        run = Dataset()
        per_slice = {tag: keyword for keyword, (tag, _vr, _pad) in _PER_SLICE.items()}
        for elem in ds:  # ascending tag order
            if int(elem.tag) in per_slice:
                self.parts += [_encode(run), per_slice[int(elem.tag)]]
                run = Dataset()
            else:
                run.add(elem)
        self.parts.append(_encode(run))

    def encode(self, values: dict) -> bytes:
        sop = _element(_MEDIA_SOP, b"UI", values["SOPInstanceUID"], b"\x00")
        body = self.meta_before + sop + self.meta_after
        group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
        chunks = [_PREAMBLE, group_length, body]
        for part in self.parts:
            if isinstance(part, bytes):
                chunks.append(part)
            else:
                tag, vr, pad = _PER_SLICE[part]
                chunks.append(_element(tag, vr, values[part], pad))
        return b"".join(chunks)


def _dataset(grid: Grid, protocol: Protocol, study: dict, series: dict):
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "BTPIPE_DEMO"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    _add_study(ds, study)
    _add_series(ds, protocol, grid, series)
    return ds


def slice_values(grid: Grid, pixels: np.ndarray, series_uid: str, k: int,
                 acquisition_time: str) -> dict:
    """The per-slice elements of slice k."""
    position = grid.position(k)
    return {"SOPInstanceUID": uid(series_uid, k), "AcquisitionTime": acquisition_time,
            "InstanceNumber": k + 1,
            "ImagePositionPatient": [_ds(v) for v in position],
            "SliceLocation": _ds(float(position @ grid.normal)),
            "PixelData": np.ascontiguousarray(pixels[k], dtype="<u2").tobytes()}


def write_series(folder, pixels: np.ndarray, grid: Grid, protocol: Protocol, study: dict,
                 series: dict) -> list[Path]:
    """Write `pixels` (uint16 [slices, rows, cols], values < 4096) as one DICOM series.

    study: patient/study attributes (see _add_study); series: uid, date, time,
    bandwidth, agent, contrast_ml, rescale_slope, window. Returns the file paths
    IM_0001.dcm ... in slice order. The caller makes the folder appear
    atomically (it lives in a temporary directory until the subject is done).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if pixels.shape != tuple(grid.shape) or pixels.dtype != np.uint16:
        raise ValueError(f"pixels {pixels.shape} {pixels.dtype} do not fit grid {grid.shape}")
    ds = _dataset(grid, protocol, study, series)
    times = slice_acquisition_times(protocol, grid.shape[0], study["manufacturer"], series["time"])
    for keyword, value in slice_values(grid, pixels, series["uid"], 0, times[0]).items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    encoder = _SliceEncoder(ds)
    paths = []
    for k in range(grid.shape[0]):
        path = folder / f"IM_{k + 1:04d}.dcm"
        path.write_bytes(encoder.encode(slice_values(grid, pixels, series["uid"], k, times[k])))
        paths.append(path)
    return paths
