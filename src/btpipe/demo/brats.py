"""Synthetic BraTS releases: case folders as the challenges ship them, for tests and benchmarks.

Each case is four sequences and a label map in BraTS geometry (240x240x155,
1 mm, LPS, the SRI24 box), built from the SRI24 tissue map with a planted
tumour: edema (bright on T2/FLAIR) around a core whose rim enhances on T1ce
and whose centre is necrotic. Files follow the release's naming, so the
recipes and the BraTS discovery run on them as on the real folders:

* ``2020``: ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz``,
  labels 1 NCR, 2 ED, 4 ET, with a ``survival_info.csv`` (see
  :func:`write_survival_info`);
* ``2021``: ``BraTS2021_00001/BraTS2021_00001_{...}.nii.gz``, labels 1, 2, 4;
* ``2023``: ``BraTS-GLI-00001-000/BraTS-GLI-00001-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
  labels 1, 2, 3;
* ``2024`` (post-treatment glioma): 2023 names with ``-100`` timepoints, labels 1
  NETC, 2 SNFH, 3 ET and 4 resection cavity.

Intensities are int16 like the releases'. Nothing here claims realism beyond
what the pipeline's stages need: a skull-stripped brain with distinct tissue
contrasts, and a tumour whose sub-regions differ across the sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import save_array_nifti, write_csv

BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SEQUENCE_ORDER = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True)
class Naming:
    """How one release names its cases and files, and its label values."""

    case: str                  # case id template, formatted with the 1-based index
    suffixes: tuple            # file suffixes for t1, t1ce, t2, flair, seg
    labels: dict               # tissue -> label value
    resection_cavity: bool = False


NAMINGS = {
    "2020": Naming("BraTS20_Training_{:03d}", ("_t1", "_t1ce", "_t2", "_flair", "_seg"),
                   {"NCR": 1, "ED": 2, "ET": 4}),
    "2021": Naming("BraTS2021_{:05d}", ("_t1", "_t1ce", "_t2", "_flair", "_seg"),
                   {"NCR": 1, "ED": 2, "ET": 4}),
    "2023": Naming("BraTS-GLI-{:05d}-000", ("-t1n", "-t1c", "-t2w", "-t2f", "-seg"),
                   {"NCR": 1, "ED": 2, "ET": 3}),
    "2024": Naming("BraTS-GLI-{:05d}-100", ("-t1n", "-t1c", "-t2w", "-t2f", "-seg"),
                   {"NCR": 1, "ED": 2, "ET": 3, "RC": 4}, resection_cavity=True),
}

# Mean intensity per tissue and sequence (t1, t1ce, t2, flair).
CONTRAST = {
    "background": (0, 0, 0, 0),
    "CSF": (280, 290, 1500, 200),
    "GM": (490, 500, 900, 700),
    "WM": (700, 710, 600, 550),
    "ED": (430, 440, 1300, 1100),
    "NCR": (230, 210, 1550, 450),
    "ET": (460, 1150, 1000, 850),
    "RC": (250, 260, 1600, 180),
}


@dataclass
class Anatomy:
    """SRI24 tissues (0 background, 1 CSF, 2 GM, 3 WM) on the BraTS array layout."""

    tissues: np.ndarray

    @classmethod
    def from_atlas(cls, atlas_dir) -> "Anatomy":
        """Read ``tissues.nii.gz`` beside the atlas brain and reorder it to BraTS arrays
        (the atlas is stored LAS with origin 0; BraTS arrays are y-flipped, same world box)."""
        import nibabel as nib

        tissues = np.asarray(nib.load(str(Path(atlas_dir) / "tissues.nii.gz")).dataobj).squeeze()
        return cls(np.ascontiguousarray(tissues[:, ::-1, :]).astype(np.uint8))


def case_id(naming: str, index: int) -> str:
    return NAMINGS[naming].case.format(int(index))


def _smooth_noise(rng, shape, scale_vox=12):
    """Low-frequency noise in about [-1, 1]: a coarse random grid, linearly upsampled."""
    from scipy.ndimage import zoom

    coarse = rng.standard_normal([max(2, int(np.ceil(s / scale_vox)) + 1) for s in shape])
    return zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1)[tuple(
        slice(0, s) for s in shape)]


def _bias_field(rng, shape, amplitude=0.08):
    """A smooth multiplicative field: 1 + a random quadratic in the normalised coordinates."""
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    field = np.ones(shape, np.float32)
    for axis, coords in enumerate(axes):
        a, b = rng.uniform(-1, 1, 2) * amplitude / 2
        profile = (a * coords + b * coords ** 2).reshape([-1 if i == axis else 1 for i in range(3)])
        field = field + profile
    return field


def tumour_regions(anatomy: Anatomy, rng: np.random.Generator, cavity: bool = False) -> dict:
    """Boolean masks NCR, ED, ET (and RC with ``cavity``) of one planted tumour in white matter."""
    brain = anatomy.tissues > 0
    wm = np.argwhere(anatomy.tissues == 3)
    centre = wm[rng.integers(len(wm))]
    radius = rng.uniform(14, 26)
    half = int(radius * 1.6) + 2
    box = tuple(slice(max(0, c - half), min(s, c + half)) for c, s in zip(centre, brain.shape))
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"))
    dist = np.sqrt(((grid - centre.reshape(3, 1, 1, 1)) ** 2).sum(0)) / radius
    dist = dist + 0.18 * _smooth_noise(rng, dist.shape, scale_vox=10)
    core, necrosis = rng.uniform(0.45, 0.6), rng.uniform(0.15, 0.3)
    inside = brain[box]
    local = {"ED": (dist <= 1.0) & (dist > core), "ET": (dist <= core) & (dist > core - 0.15),
             "NCR": dist <= core - 0.15}
    local["NCR"] &= (dist > necrosis) | (rng.random() < 0.5)  # half the tumours: solid core
    if cavity:
        offset = (grid - centre.reshape(3, 1, 1, 1)) / radius - rng.uniform(-0.5, 0.5, (3, 1, 1, 1))
        local["RC"] = np.sqrt((offset ** 2).sum(0)) <= 0.35
        for name in ("NCR", "ET", "ED"):
            local[name] &= ~local["RC"]
    masks = {}
    for name, mask in local.items():
        full = np.zeros(brain.shape, bool)
        full[box] = mask & inside
        masks[name] = full
    return masks


def render(anatomy: Anatomy, regions: dict, rng: np.random.Generator) -> dict:
    """int16 volumes per sequence: tissue contrast, tumour, smooth bias field and noise."""
    from scipy.ndimage import gaussian_filter

    names = {1: "CSF", 2: "GM", 3: "WM"}
    brain = anatomy.tissues > 0
    bias = _bias_field(rng, brain.shape)
    out = {}
    for k, seq in enumerate(SEQUENCE_ORDER):
        volume = np.zeros(brain.shape, np.float32)
        for value, tissue in names.items():
            volume[anatomy.tissues == value] = CONTRAST[tissue][k]
        for tissue, mask in regions.items():
            volume[mask] = CONTRAST[tissue][k]
        volume = gaussian_filter(volume, 0.8) * bias
        volume += rng.normal(0, 0.03 * volume[brain].mean(), volume.shape).astype(np.float32)
        out[seq] = np.clip(np.where(brain, volume, 0), 0, 32767).astype(np.int16)
    return out


def label_map(regions: dict, labels: dict) -> np.ndarray:
    out = np.zeros(next(iter(regions.values())).shape, np.uint8)
    for tissue in ("ED", "NCR", "ET", "RC"):
        if tissue in regions:
            out[regions[tissue]] = labels[tissue]
    return out


def write_case(out_dir, naming: str, index: int, anatomy: Anatomy, seed: int = 0,
               with_labels: bool = True) -> dict:
    """Write one case folder; returns {"subject", "folder", "volumes_ml"} (tumour volumes)."""
    spec = NAMINGS[naming]
    rng = np.random.default_rng([int(seed), int(index)])
    regions = tumour_regions(anatomy, rng, cavity=spec.resection_cavity)
    volumes = render(anatomy, regions, rng)
    subject = case_id(naming, index)
    folder = Path(out_dir) / subject
    for seq, suffix in zip(SEQUENCE_ORDER, spec.suffixes):
        save_array_nifti(folder / f"{subject}{suffix}.nii.gz", volumes[seq], BRATS_AFFINE,
                         dtype=np.int16)
    if with_labels:
        save_array_nifti(folder / f"{subject}{spec.suffixes[-1]}.nii.gz",
                         label_map(regions, spec.labels), BRATS_AFFINE, dtype=np.uint8)
    return {"subject": subject, "folder": str(folder),
            "volumes_ml": {k: float(v.sum()) / 1000 for k, v in regions.items()}}


def write_brats_folder(out_dir, n: int, atlas_dir, naming: str = "2020", seed: int = 0,
                       with_labels: bool = True) -> list[dict]:
    """``n`` cases of one release's naming under ``out_dir`` (see :func:`write_case`);
    ``atlas_dir`` holds the SRI24 ``tissues.nii.gz`` (``btpipe atlas`` writes it)."""
    anatomy = Anatomy.from_atlas(atlas_dir)
    return [write_case(out_dir, naming, i, anatomy, seed, with_labels) for i in range(1, n + 1)]


def draw_outcome(rng: np.random.Generator, volumes_ml: dict) -> dict:
    """Age, survival days (older patients and larger tumours die sooner) and resection."""
    age = float(np.round(np.clip(rng.normal(60, 12), 25, 85), 3))
    eta = 0.6 * (age - 60) / 10 + 0.4 * np.log(max(sum(volumes_ml.values()), 1.0) / 40)
    days = int(max(10, round(420 * (-np.log(rng.random())) ** (1 / 1.5) / np.exp(eta / 1.5))))
    resection = str(rng.choice(["GTR", "STR", "NA"], p=[0.6, 0.2, 0.2]))
    return {"Age": age, "Survival_days": days, "Extent_of_Resection": resection}


def write_survival_info(path, cases: list[dict], seed: int = 0, alive: tuple = (),
                        unknown_resection: tuple = ()) -> "pd.DataFrame":
    """A BraTS 2020 ``survival_info.csv`` for ``cases``: Brats20ID, Age, Survival_days,
    Extent_of_Resection. Subjects in ``alive`` read ``ALIVE (N days later)`` (censored), those
    in ``unknown_resection`` have ``NA`` resection."""
    import pandas as pd

    rows = []
    for case in cases:
        rng = np.random.default_rng([int(seed), len(rows), 20])
        row = {"Brats20ID": case["subject"], **draw_outcome(rng, case["volumes_ml"])}
        if case["subject"] in alive:
            row["Survival_days"] = f"ALIVE ({row['Survival_days']} days later)"
        if case["subject"] in unknown_resection:
            row["Extent_of_Resection"] = "NA"
        rows.append(row)
    table = pd.DataFrame(rows, columns=["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"])
    write_csv(path, table)
    return table
