"""Label conventions and BraTS regions; conventions are data, not code.

A convention maps label values to tissue names. Regions are derived from the
names: WT = every tumour label, TC = every tumour label but edema, ET =
enhancing. A tissue outside the tumour (the resection cavity of post-treatment
scans, RC) belongs to no region.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

REGIONS = ("WT", "TC", "ET")
# Sub-regions used by radiomics in addition to REGIONS.
SUBREGIONS = ("NCR", "ED")

CONVENTIONS = {
    "brats2021": {1: "NCR", 2: "ED", 4: "ET"},
    "brats2023": {1: "NCR", 2: "ED", 3: "ET"},
    # BraTS 2015: 3 = non-enhancing tumour, counted in the core like necrosis.
    "brats2015": {1: "NCR", 2: "ED", 3: "NET", 4: "ET"},
    # BraTS 2024 post-treatment glioma: 1 NETC, 2 SNFH, 3 ET as in 2023, plus
    # 4 = resection cavity, which is labelled but is not tumour.
    "brats2024": {1: "NCR", 2: "ED", 3: "ET", 4: "RC"},
}

_CORE_NAMES = {"NCR", "NET"}
# Labelled tissues that belong to no region (WT, TC, ET all exclude them).
NON_TUMOUR_NAMES = {"RC"}
TISSUE_NAMES = {"NCR", "ED", "ET", "NET"} | NON_TUMOUR_NAMES
# Config value: choose the convention from the subjects' BraTS file names
# (btpipe.samples.effective_labels); never a convention itself.
AUTO = "auto"


def resolve_convention(labels) -> dict[int, str]:
    """Return {value: name} for a convention name or an explicit mapping."""
    if isinstance(labels, str):
        if labels == AUTO:
            raise ConfigError("labels: 'auto' must be resolved from the subjects' file names "
                              "first (btpipe.samples.effective_labels)")
        if labels not in CONVENTIONS:
            raise ConfigError(
                f"labels: unknown convention {labels!r}; choose one of "
                f"{sorted(CONVENTIONS)} or give a mapping value -> {'/'.join(sorted(TISSUE_NAMES))}")
        return dict(CONVENTIONS[labels])
    mapping = {int(k): str(v).upper() for k, v in dict(labels).items()}
    unknown = set(mapping.values()) - TISSUE_NAMES
    if unknown:
        raise ConfigError(f"labels: unknown tissue names {sorted(unknown)}")
    return mapping


def region_values(convention: dict[int, str]) -> dict[str, list[int]]:
    """Label values belonging to each region (WT, TC, ET) and sub-region."""
    by_name: dict[str, list[int]] = {}
    for value, name in convention.items():
        by_name.setdefault(name, []).append(value)
    core = [v for v, n in convention.items() if n in _CORE_NAMES or n == "ET"]
    return {
        "WT": sorted(v for v, n in convention.items() if n not in NON_TUMOUR_NAMES),
        "TC": sorted(core),
        "ET": sorted(by_name.get("ET", [])),
        "NCR": sorted(v for v, n in convention.items() if n in _CORE_NAMES),
        "ED": sorted(by_name.get("ED", [])),
    }


def labels_to_regions(label_map, labels="brats2021") -> np.ndarray:
    """Label map [X, Y, Z] -> boolean regions [3, X, Y, Z] in order WT, TC, ET."""
    values = region_values(resolve_convention(labels))
    label_map = np.asarray(label_map)
    return np.stack([np.isin(label_map, values[r]) for r in REGIONS])


def region_mask(label_map, region: str, labels="brats2021") -> np.ndarray:
    values = region_values(resolve_convention(labels))
    return np.isin(np.asarray(label_map), values[region])


def regions_to_labels(regions, labels="brats2021") -> np.ndarray:
    """Nested regions [3, ...] (WT, TC, ET; booleans) -> label map.

    ET inside TC inside WT, as the BraTS challenge post-processing does:
    WT only -> ED, TC but not ET -> NCR, ET -> ET. Region masks are nested
    first (TC within WT, ET within TC) so every voxel gets one label.
    """
    conv = resolve_convention(labels)
    by_name = {name: value for value, name in conv.items()}
    wt, tc, et = (np.asarray(r, bool) for r in regions)
    tc = tc & wt
    et = et & tc
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = by_name["ED"]
    out[tc] = by_name["NCR"] if "NCR" in by_name else by_name["NET"]
    out[et] = by_name["ET"]
    return out


def convert_labels(label_map, source, target) -> np.ndarray:
    """Map a label map between conventions through the regions."""
    return regions_to_labels(labels_to_regions(label_map, source), target)


def unexpected_values(label_map, labels="brats2021") -> list[int]:
    """Label values present that the convention does not define (0 allowed)."""
    allowed = set(resolve_convention(labels)) | {0}
    present = np.unique(np.asarray(label_map)).astype(int)
    return sorted(int(v) for v in present if v not in allowed)
