"""De-identification: what may leave ingest, and clean NIfTI bytes.

Two layers, because either alone can leak:

1. Sidecar keys: a key is kept only if it is on ``SIDECAR_ALLOW`` (technical
   acquisition fields) and not on ``SIDECAR_DENY``. Unknown keys are dropped,
   so a new dcm2niix field never leaks by default.
2. Values: every string value (and every text field of the series table) is
   checked against the PHI values read from the DICOM headers themselves
   (patient name, ID, birth date, accession number, institution, physicians,
   ...). A value containing one of them is dropped or blanked.

NIfTI header text fields (descrip, aux_file, db_name, intent_name, data_type)
are zeroed byte by byte and header extensions are wiped, so the voxel data
and geometry stay bit-identical to what dcm2niix wrote.
"""

from __future__ import annotations

import gzip
import io
import re
import struct

# Technical fields that describe the acquisition, not the person or the site.
SIDECAR_ALLOW = frozenset({
    "Modality", "MagneticFieldStrength", "ImagingFrequency", "Manufacturer",
    "ManufacturersModelName", "SoftwareVersions", "MRAcquisitionType",
    "SeriesDescription", "ProtocolName", "ScanningSequence", "SequenceVariant",
    "ScanOptions", "SequenceName", "PulseSequenceType", "PulseSequenceDetails",
    "ImageType", "ImageTypeText", "RawImage", "NonlinearGradientCorrection",
    "SeriesNumber", "AcquisitionNumber", "SliceThickness", "SpacingBetweenSlices",
    "SAR", "EchoTime", "EchoNumber", "RepetitionTime", "InversionTime", "FlipAngle",
    "PartialFourier", "BaseResolution", "ShimSetting", "TxRefAmp", "PhaseResolution",
    "PercentPhaseFOV", "PercentSampling", "EchoTrainLength", "PhaseEncodingSteps",
    "PhaseEncodingStepsOutOfPlane", "FrequencyEncodingSteps", "AcquisitionMatrixPE",
    "ReconMatrixPE", "BandwidthPerPixelPhaseEncode", "PixelBandwidth", "DwellTime",
    "EffectiveEchoSpacing", "DerivedVendorReportedEchoSpacing", "TotalReadoutTime",
    "PhaseEncodingAxis", "PhaseEncodingDirection", "InPlanePhaseEncodingDirectionDICOM",
    "ParallelReductionFactorInPlane", "ParallelReductionFactorOutOfPlane",
    "MultibandAccelerationFactor", "SliceTiming", "ImageOrientationPatientDICOM",
    "ImageOrientationText", "ReceiveCoilName", "ReceiveCoilActiveElements",
    "CoilString", "CoilCombinationMethod", "MatrixCoilMode", "MTState",
    "SpoilingState", "SpoilingType", "NumberOfAverages", "RefLinesPE", "DelayTime",
    "DiffusionScheme", "ConvolutionKernel", "ExposureTime", "XRayExposure",
    "XRayTubeCurrent", "PhilipsRescaleSlope", "PhilipsRescaleIntercept",
    "PhilipsScaleSlope", "UsePhilipsFloatNotDisplayScaling", "ContrastBolusAgent",
    "ContrastBolusIngredient", "ContrastBolusVolume", "ContrastBolusRoute",
    "BodyPartExamined", "PatientPosition", "ConversionSoftware",
    "ConversionSoftwareVersion", "BidsGuess", "ConsistencyInfo", "EchoTime1",
    "EchoTime2", "SliceEncodingDirection", "WaterFatShift", "MRAcquisitionPlane",
    "AcquisitionDuration", "NumberOfVolumesDiscardedByScanner",
})

# Identifying fields; checked first so they stay out even if someone adds them
# to the allowlist by mistake. dcm2niix -ba y already removes most of them.
SIDECAR_DENY = frozenset({
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientWeight", "PatientSize", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber",
    "StudyDescription", "ProcedureStepDescription", "StudyID", "StudyInstanceUID",
    "SeriesInstanceUID", "ImageComments", "AcquisitionDateTime", "AcquisitionDate",
    "AcquisitionTime", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime",
    "ContentDate", "ContentTime", "TablePosition", "RequestingPhysician",
})

# DICOM keywords whose values are searched for in every text btpipe writes.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "RequestingPhysician", "StationName", "DeviceSerialNumber", "StudyID",
)
_MIN_TOKEN = 4  # shorter values ("M", "1", "US") would blank harmless text


def phi_tokens(dataset) -> set[str]:
    """PHI strings found in one pydicom dataset (upper case), to search text for."""
    tokens = set()
    for keyword in PHI_KEYWORDS:
        value = dataset.get(keyword)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) or getattr(value, "is_multi", False) \
            else [value]
        for item in values:
            text = str(item).strip()
            tokens.add(text)
            if keyword.endswith("Name"):
                # 'FAMILY^GIVEN' may appear as 'FAMILY GIVEN' or as single parts.
                parts = [p for p in re.split(r"[\^=]", text) if p.strip()]
                tokens.add(" ".join(parts))
                tokens.update(p for p in parts if len(p.strip()) >= 5)
    return {t.upper() for t in tokens if len(t) >= _MIN_TOKEN}


def contains_phi(text, tokens) -> bool:
    upper = str(text).upper()
    return any(token in upper for token in tokens)


def scrub_text(text, tokens):
    """`text` unchanged, or None if it holds a PHI token."""
    if text is None:
        return None
    return None if contains_phi(text, tokens) else text


def scrub_sidecar(meta: dict, tokens=frozenset()) -> tuple[dict, list[str]]:
    """Keep allowlisted, non-denied keys whose values hold no PHI token.

    Returns (clean sidecar, sorted list of removed keys).
    """
    clean, removed = {}, []
    for key, value in meta.items():
        if key in SIDECAR_DENY or key not in SIDECAR_ALLOW or \
                (tokens and contains_phi(_flatten(value), tokens)):
            removed.append(key)
            continue
        clean[key] = value
    return clean, sorted(removed)


def _flatten(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_flatten(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k} {_flatten(v)}" for k, v in value.items())
    return str(value)


# NIfTI-1 text fields: (offset, length). NIfTI-2 has the same fields elsewhere.
_NIFTI1_TEXT = {"data_type": (4, 10), "db_name": (14, 18), "descrip": (148, 80),
                "aux_file": (228, 24), "intent_name": (328, 16)}
_NIFTI2_TEXT = {"descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)}


def blank_nifti_text(raw: bytes) -> bytes:
    """NIfTI-1/2 bytes with text fields zeroed and extensions wiped.

    Voxel data and every numeric header field are left as they are.
    """
    buf = bytearray(raw)
    size_le = struct.unpack("<i", bytes(buf[:4]))[0]
    size_be = struct.unpack(">i", bytes(buf[:4]))[0]
    endian = "<" if size_le in (348, 540) else ">" if size_be in (348, 540) else None
    if endian is None:
        raise ValueError("not a NIfTI-1/2 file (sizeof_hdr is neither 348 nor 540)")
    size = struct.unpack(endian + "i", bytes(buf[:4]))[0]
    fields = _NIFTI1_TEXT if size == 348 else _NIFTI2_TEXT
    for offset, length in fields.values():
        buf[offset:offset + length] = bytes(length)
    if size == 348:
        vox_offset = int(struct.unpack(endian + "f", bytes(buf[108:112]))[0])
    else:
        vox_offset = int(struct.unpack(endian + "q", bytes(buf[168:176]))[0])
    if len(buf) >= size + 4 and buf[size] != 0:
        # Extensions live between the header and the data: zero them (the
        # space stays as padding, so the data offset does not move).
        buf[size:size + 4] = bytes(4)
        buf[size + 4:vox_offset] = bytes(max(0, vox_offset - size - 4))
    return bytes(buf)


def read_nifti_bytes(path) -> bytes:
    """Uncompressed bytes of a .nii or .nii.gz file."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as fh:
        return fh.read()


def gzip_bytes(raw: bytes, level: int = 1) -> bytes:
    """Deterministic gzip (no file name, mtime 0): same input, same bytes.
    Level 1: about 3x faster than 6 on MR volumes for ~1.5 % larger files."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=level, mtime=0) as gz:
        gz.write(raw)
    return out.getvalue()


def write_clean_nifti(src, dst) -> None:
    """Copy a NIfTI file to `dst` (.nii.gz) with header text blanked, atomically."""
    from ..io import write_bytes

    write_bytes(dst, gzip_bytes(blank_nifti_text(read_nifti_bytes(src))))
