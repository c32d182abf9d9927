"""Scanner side of the demo: protocols, native grids, pose, and image formation.

Coordinates: the scanner frame is DICOM patient LPS in mm, as in
ImagePositionPatient. Every native grid is aligned with the scanner axes
(sagittal, coronal or axial, no oblique angulation): volume axes are
(slice, row, column) and voxel (k, r, c) sits at
    origin + k * slice_spacing * normal + r * PixelSpacing[0] * coldir
           + c * PixelSpacing[1] * rowdir,
with rowdir/coldir the two ImageOrientationPatient vectors and
normal = rowdir x coldir.

Each image is computed in one interpolation: for every native voxel centre
(or sub-slice point, for thick 2D slices) the scanner point is deformed,
mapped back through the head pose into template voxels, pushed back by the
tumour's mass effect, and the template contrast volume is sampled there
(trilinear, torch.grid_sample, which is about twice as fast as
scipy.ndimage.map_coordinates(order=1) on the same grid).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from .anatomy import CONTRASTS, HEAD_CENTRE_MNI, TUMOUR_SIGNAL, TemplateHead
from .tumour import Tumour, push_back

PLANES = {  # rowdir, coldir (ImageOrientationPatient), LPS
    "sag": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "cor": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "ax": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}


@dataclass(frozen=True)
class Protocol:
    """One series of a vendor's brain-tumour protocol (values as on real scanners)."""

    sequence: str               # t1, t1ce, t2, flair
    description: str            # SeriesDescription and ProtocolName
    plane: str                  # sag, cor, ax
    fov_mm: tuple               # (along rows/coldir, along columns/rowdir, slab along normal)
    pixel_mm: float             # in-plane spacing at voxel_scale 1
    slice_mm: float             # slice thickness at voxel_scale 1
    gap_mm: float = 0.0         # gap between 2D slices
    mr_type: str = "3D"         # MRAcquisitionType
    scanning_sequence: str = "GR\\IR"
    sequence_variant: str = "SP\\MP"
    scan_options: str = ""
    sequence_name: str = ""
    tr: float = 2300.0
    te: float = 2.3
    ti: float | None = None
    flip: float = 8.0
    echo_train: int = 1
    series_number: int = 1


def _p(seq, desc, plane, fov, pixel, thick, **kw):
    return Protocol(sequence=seq, description=desc, plane=plane, fov_mm=fov, pixel_mm=pixel,
                    slice_mm=thick, **kw)


_T2 = dict(mr_type="2D", scanning_sequence="SE", sequence_variant="SK\\SP\\OSP",
           flip=150.0, echo_train=15)
_FLAIR = dict(mr_type="2D", scanning_sequence="SE\\IR", sequence_variant="SK\\SP\\MP\\OSP",
              flip=150.0, echo_train=16)

VENDORS = {
    "SIEMENS": {
        "model": "Skyra", "field": 3.0, "software": "syngo MR E11", "agent": "Gadovist",
        "protocols": (
            _p("t1", "t1_mprage_sag", "sag", (240, 240, 192), 1.0, 1.0, tr=2300.0, te=2.32,
               ti=900.0, flip=8.0, sequence_variant="SK\\SP\\MP", scan_options="IR",
               sequence_name="*tfl3d1_16ns", series_number=3),
            _p("t2", "t2_tse_tra", "ax", (230, 230, 198), 0.9, 5.0, gap_mm=0.5, tr=5000.0,
               te=98.0, sequence_name="*tse2d1_15", series_number=4, **_T2),
            _p("flair", "t2_tirm_tra_dark-fluid", "ax", (240, 240, 198), 0.9375, 5.0,
               gap_mm=1.0, tr=9000.0, te=81.0, ti=2500.0, sequence_name="*tir2d1_16",
               scan_options="IR", series_number=5, **_FLAIR),
            _p("t1ce", "t1_mprage_sag_post_contrast", "sag", (240, 240, 192), 1.0, 1.0,
               tr=2300.0, te=2.32, ti=900.0, flip=8.0, sequence_variant="SK\\SP\\MP",
               scan_options="IR", sequence_name="*tfl3d1_16ns", series_number=8),
        )},
    "GE MEDICAL SYSTEMS": {
        "model": "DISCOVERY MR750", "field": 3.0, "software": "DV26.0_R03", "agent": "MULTIHANCE",
        "protocols": (
            _p("t1", "Ax T1 3D BRAVO", "ax", (240, 240, 200), 1.0, 1.0, tr=8.2, te=3.2,
               ti=450.0, flip=12.0, scanning_sequence="GR", sequence_variant="SS\\SK",
               scan_options="FAST_GEMS\\EDR_GEMS\\ACC_GEMS", sequence_name="efgre3d",
               series_number=2),
            _p("t2", "Ax T2 FSE", "ax", (230, 230, 198), 0.9, 5.0, gap_mm=0.5, tr=4800.0,
               te=102.0, sequence_name="fse-xl", series_number=3, **_T2),
            _p("flair", "Ax T2 FLAIR", "ax", (240, 240, 198), 0.9375, 5.0, gap_mm=1.0,
               tr=9500.0, te=120.0, ti=2375.0, sequence_name="fse-ir", series_number=4,
               **_FLAIR),
            _p("t1ce", "T1 3D +C", "ax", (240, 240, 200), 1.0, 1.0, tr=8.2, te=3.2, ti=450.0,
               flip=12.0, scanning_sequence="GR", sequence_variant="SS\\SK",
               scan_options="FAST_GEMS\\EDR_GEMS\\ACC_GEMS", sequence_name="efgre3d",
               series_number=7),
        )},
    "Philips": {
        "model": "Ingenia", "field": 3.0, "software": "5.4.1", "agent": "DOTAREM",
        "protocols": (
            _p("t1", "T1W_3D_TFE", "cor", (240, 200, 224), 1.0, 1.0, tr=8.1, te=3.7,
               flip=8.0, scanning_sequence="GR", sequence_variant="SP\\MP",
               sequence_name="T1TFE", series_number=301),
            _p("t2", "T2W_TSE_TRA", "ax", (230, 230, 198), 0.9, 5.0, gap_mm=0.5, tr=4200.0,
               te=90.0, sequence_name="TSE", series_number=401, **_T2),
            _p("flair", "T2W_FLAIR_TRA", "ax", (240, 240, 198), 0.9375, 5.0, gap_mm=1.0,
               tr=11000.0, te=125.0, ti=2800.0, sequence_name="IR", series_number=501,
               **_FLAIR),
            _p("t1ce", "T1W_3D_TFE_GD", "cor", (240, 200, 224), 1.0, 1.0, tr=8.1, te=3.7,
               flip=8.0, scanning_sequence="GR", sequence_variant="SP\\MP",
               sequence_name="T1TFE", series_number=801),
        )},
}


@dataclass(frozen=True)
class Grid:
    """A native grid in scanner LPS mm: shape (slices, rows, columns)."""

    rowdir: np.ndarray
    coldir: np.ndarray
    pixel: tuple            # PixelSpacing: (between rows, between columns)
    slice_spacing: float
    slice_thickness: float
    shape: tuple
    origin: np.ndarray      # ImagePositionPatient of slice 0

    @functools.cached_property
    def normal(self):
        return np.cross(self.rowdir, self.coldir)

    def position(self, k):
        return self.origin + k * self.slice_spacing * self.normal

    def axes(self):
        """Per volume axis (slice, row, column): (unit direction, spacing)."""
        return [(self.normal, self.slice_spacing), (self.coldir, self.pixel[0]),
                (self.rowdir, self.pixel[1])]

    def lps_affine(self):
        """(column, row, slice) index -> LPS mm (the DICOM convention)."""
        aff = np.eye(4)
        aff[:3, 0] = self.rowdir * self.pixel[1]
        aff[:3, 1] = self.coldir * self.pixel[0]
        aff[:3, 2] = self.normal * self.slice_spacing
        aff[:3, 3] = self.origin
        return aff

    def nifti_affine(self):
        """RAS affine of the array volume.transpose(2, 1, 0), i.e. [column, row, slice]."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps_affine()


def make_grid(protocol: Protocol, centre_lps, voxel_scale=1.0) -> Grid:
    """The protocol's native grid, centred on `centre_lps` (mm)."""
    rowdir, coldir = (np.array(v) for v in PLANES[protocol.plane])
    pixel = protocol.pixel_mm * voxel_scale
    thick = protocol.slice_mm * voxel_scale
    spacing = (protocol.slice_mm + protocol.gap_mm) * voxel_scale
    rows = max(int(round(protocol.fov_mm[0] / pixel)), 8)
    cols = max(int(round(protocol.fov_mm[1] / pixel)), 8)
    slices = max(int(round(protocol.fov_mm[2] / spacing)), 4)
    normal = np.cross(rowdir, coldir)
    origin = (np.asarray(centre_lps, float) - (cols - 1) / 2 * pixel * rowdir
              - (rows - 1) / 2 * pixel * coldir - (slices - 1) / 2 * spacing * normal)
    return Grid(rowdir=rowdir, coldir=coldir, pixel=(pixel, pixel), slice_spacing=spacing,
                slice_thickness=thick, shape=(slices, rows, cols), origin=np.round(origin, 4))


# ---------------------------------------------------------------- pose and warp

@dataclass
class Pose:
    """Where the head sits in the scanner.

    angles_deg: (about L-R, about A-P, about S-I) rotations of the head;
    translation_mm: head centre in scanner LPS; scale: head size per axis
    relative to MNI152 (template brains are larger than average).
    """

    angles_deg: np.ndarray
    translation_mm: np.ndarray
    scale: np.ndarray

    def head_to_scanner(self, motion=None):
        """4x4: MNI RAS mm -> scanner LPS mm (optionally with extra motion)."""
        centre = np.eye(4)
        centre[:3, 3] = -HEAD_CENTRE_MNI
        flip_scale = np.diag([-self.scale[0], -self.scale[1], self.scale[2], 1.0])
        rot = np.eye(4)
        rot[:3, :3] = Rotation.from_euler("xyz", self.angles_deg, degrees=True).as_matrix()
        shift = np.eye(4)
        shift[:3, 3] = self.translation_mm
        out = shift @ rot @ flip_scale @ centre
        return out if motion is None else motion @ out


def draw_pose(rng) -> Pose:
    angles = np.array([rng.uniform(-15, 15), rng.uniform(-8, 8), rng.uniform(-8, 8)])
    return Pose(angles_deg=angles, translation_mm=rng.uniform(-10, 10, 3),
                scale=rng.uniform(0.88, 1.02, 3))


def draw_motion(rng, centre_lps, degrees=2.0, mm=1.5):
    """Small rigid motion between series (4x4, about the head centre)."""
    rot = Rotation.from_euler("xyz", rng.uniform(-degrees, degrees, 3),
                              degrees=True).as_matrix()
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre_lps - rot @ centre_lps + rng.uniform(-mm, mm, 3)
    return out


_BASIS_CENTRES = np.linspace(-140.0, 140.0, 9)
_BASIS_SIGMA = 30.0


@dataclass
class Warp:
    """Smooth random displacement u(w) in scanner mm, a tensor product of
    Gaussian bumps around the head centre: u_d = sum C[d,a,b,e] phi_a(x) phi_b(y) phi_e(z)."""

    centre: np.ndarray
    coef: np.ndarray = field(repr=False)   # [3, m, m, m]

    def basis(self, axis, coords):
        rel = np.asarray(coords)[:, None] - self.centre[axis] - _BASIS_CENTRES[None, :]
        return np.exp(-0.5 * (rel / _BASIS_SIGMA) ** 2)


def draw_warp(rng, centre, rms_mm=2.5) -> Warp:
    m = len(_BASIS_CENTRES)
    # sum of phi^2 over overlapping bumps ~ 1.5 per axis -> ~3.5 in 3D
    coef = rng.normal(0.0, rms_mm / np.sqrt(3.5), (3, m, m, m))
    return Warp(centre=np.asarray(centre, float), coef=coef)


# ------------------------------------------------------------------- rendering

def _normaliser(shape):
    """4x4: template voxel (i, j, k) -> grid_sample coordinates (x=k, y=j, z=i) in [-1, 1]."""
    n = np.zeros((4, 4))
    for out_row, axis in enumerate((2, 1, 0)):
        n[out_row, axis] = 2.0 / (shape[axis] - 1)
        n[out_row, 3] = -1.0
    n[3, 3] = 1.0
    return n


def sample_points(grid: Grid, sub_offsets=(0.0,)):
    """World coordinates along each volume axis, with sub-slices for thick slices.

    Returns (per volume axis: (world axis index, sign, 1-D world coordinate array)),
    and the number of sub-slices S (the slice axis holds slices*S points).
    """
    out = []
    for axis, ((direction, spacing), n) in enumerate(zip(grid.axes(), grid.shape)):
        world_axis = int(np.argmax(np.abs(direction)))
        sign = float(np.sign(direction[world_axis]))
        steps = np.arange(n, dtype=np.float64) * spacing
        if axis == 0:
            offs = np.asarray(sub_offsets) * grid.slice_thickness
            steps = (steps[:, None] + offs[None, :]).ravel()
        out.append((world_axis, sign, grid.origin[world_axis] + sign * steps))
    return out


def template_coordinates(points, to_template: np.ndarray, warp: Warp, normaliser):
    """grid_sample coordinates [n0, n1, n2, 3] of the warped scanner points.

    to_template: 4x4 scanner LPS -> template voxel. The grids are aligned with
    the scanner axes, so each world coordinate varies along one volume axis
    and the warp is a tensor product of per-axis bases: the whole map is
        out[k, r, c] = sum_a B0[k, a] T[a, r, c]
    with B0 the slice-axis basis augmented by [1, w0] (affine part), one
    matrix product that writes the result in its final layout.
    """
    import torch

    full = normaliser @ to_template
    lin, off = full[:3, :3], full[:3, 3]
    (w0, _, c0), (w1, _, c1), (w2, _, c2) = points
    coef = np.einsum("cd,dxyz->cxyz", lin, warp.coef)          # lin @ u
    coef = np.transpose(coef, (1 + w0, 1 + w1, 1 + w2, 0))     # [a, b, e, channel]
    b1, b2 = warp.basis(w1, c1), warp.basis(w2, c2)
    t = np.einsum("abec,rb,se->arsc", coef, b1, b2, optimize=True)  # [m, n1, n2, 3]
    affine12 = (c1[:, None, None] * lin[:, w1][None, None, :]
                + c2[None, :, None] * lin[:, w2][None, None, :] + off)
    const = np.broadcast_to(lin[:, w0], affine12.shape)
    t_aug = np.concatenate([t, affine12[None], const[None]], axis=0)
    b0_aug = np.concatenate([warp.basis(w0, c0), np.ones((len(c0), 1)), c0[:, None]], axis=1)
    t_aug = torch.from_numpy(t_aug.reshape(len(t_aug), -1).astype(np.float32))
    out = torch.from_numpy(b0_aug.astype(np.float32)) @ t_aug
    return out.view(len(c0), len(c1), len(c2), 3)


def _near_block(grid_t, lo_n, hi_n, step=4):
    """Index ranges of the volume block whose points may fall in [lo_n, hi_n]
    (normalised template coordinates), found on every `step`-th point plus a
    margin: the map is smooth, so no point inside is missed."""
    import torch

    coarse = grid_t[::step, ::step, ::step]
    inside = ((coarse >= torch.from_numpy(lo_n)) & (coarse <= torch.from_numpy(hi_n))).all(-1)
    hits = inside.nonzero()
    if len(hits) == 0:
        return None
    first = (hits.min(0).values.numpy() - 1) * step
    last = (hits.max(0).values.numpy() + 2) * step
    return tuple(slice(max(int(a), 0), min(int(b), n))
                 for a, b, n in zip(first, last, grid_t.shape[:3]))


@dataclass
class Rendered:
    image: np.ndarray                 # float32 [slices*S, rows, cols], noiseless, bias-free
    labels: np.ndarray | None = None  # uint8 [slices, rows, cols] (brats2021)
    brain: np.ndarray | None = None   # bool


def render(head: TemplateHead, volumes_t, contrast: str, grid: Grid, to_template,
           warp: Warp, tumour: Tumour, sub_offsets=(0.0,), with_truth=False) -> Rendered:
    """Sample one contrast (and optionally labels and brain mask) on a native grid.

    volumes_t: torch tensor [1, 5, X, Y, Z] (the four contrasts, then the brain
    mask). With sub_offsets (fractions of the slice thickness) the slice axis
    holds slices*len(sub_offsets) points, to be averaged by the caller.
    """
    import torch
    import torch.nn.functional as F

    norm = _normaliser(head.shape)
    points = sample_points(grid, sub_offsets)
    # Sample in the template's memory order (volume axes sorted by the world
    # axis they run along): grid_sample then walks the template along its
    # fastest axis, several times faster than across it. Undone at the end.
    order = sorted(range(3), key=lambda axis: points[axis][0])
    g = template_coordinates([points[a] for a in order], to_template, warp, norm)

    # Points near the tumour (inside the sphere that holds the tumour fields and
    # the mass effect): template voxel coordinates, then the mass effect.
    corners = np.stack([norm[:3, :3] @ tumour.lo + norm[:3, 3],
                        norm[:3, :3] @ tumour.hi + norm[:3, 3]])
    block = _near_block(g, corners.min(0).astype(np.float32), corners.max(0).astype(np.float32))
    if block is not None:
        # grid_sample order is (k, j, i): work in that order, in float32.
        scale = torch.tensor([(n - 1) / 2.0 for n in head.shape[::-1]])
        centre = torch.from_numpy(tumour.centre[::-1].astype(np.float32).copy())
        pts = g[block].reshape(-1, 3)
        rel = (pts + 1.0) * scale - centre
        near = ((rel * rel).sum(1) < tumour.radius ** 2).nonzero().squeeze(1)
        rel = rel[near]
        pts[near] = (push_back(rel, tumour) + centre) / scale - 1.0
        g[block] = pts.view(g[block].shape)

    c = CONTRASTS.index(contrast)
    vol = volumes_t[:, [c, 4]] if with_truth else volumes_t[:, c:c + 1]
    sampled = F.grid_sample(vol, g[None], mode="bilinear", padding_mode="zeros",
                            align_corners=True)[0].numpy()
    image = sampled[0]
    labels = np.zeros(image.shape, np.uint8) if with_truth else None

    if block is not None and len(near):
        # Tumour fields at the un-pushed points: partial-volume mixing.
        box_half = torch.tensor([(n - 1) / 2.0 for n in tumour.fields.shape[:0:-1]])
        box_centre = torch.from_numpy((tumour.centre - tumour.lo)[::-1].astype(np.float32).copy())
        qb = (rel + box_centre) / box_half - 1.0
        f_ncr, f_tc, f_wt, tex = F.grid_sample(
            torch.from_numpy(tumour.fields)[None], qb.view(1, 1, 1, -1, 3), mode="bilinear",
            padding_mode="zeros", align_corners=True)[0, :, 0, 0]
        img_block = torch.from_numpy(np.ascontiguousarray(image[block])).view(-1)
        base = img_block[near]
        s_ncr, s_et, s_ed = TUMOUR_SIGNAL[contrast]
        mixed = (base * (1 - f_wt) + f_ncr * s_ncr + (f_tc - f_ncr) * s_et
                 + (f_wt - f_tc) * (0.45 * base + 0.55 * s_ed)) * (1 + 0.07 * tex * f_wt)
        img_block[near] = mixed
        image[block] = img_block.numpy().reshape(image[block].shape)
        if with_truth:
            lab = torch.where(f_ncr >= 0.5, 1, torch.where(f_tc >= 0.5, 4,
                                                          torch.where(f_wt >= 0.5, 2, 0)))
            lab_block = torch.zeros(img_block.shape, dtype=torch.uint8)
            lab_block[near] = lab.to(torch.uint8)
            labels[block] = lab_block.numpy().reshape(labels[block].shape)

    back = np.argsort(order)
    out = Rendered(image=np.ascontiguousarray(image.transpose(back)))
    if with_truth:
        out.labels = np.ascontiguousarray(labels.transpose(back))
        out.brain = np.ascontiguousarray(((sampled[1] >= 0.5) | (labels > 0)).transpose(back))
    return out


def bias_field(grid: Grid, rng, centre, amplitude=0.12):
    """Smooth multiplicative coil bias, separable over the scanner axes.

    Returns three float32 factors (slice, row, column axes) whose outer
    product is the field.
    """
    coef = rng.normal(0.0, amplitude, (3, 2))
    factors = []
    for (direction, spacing), n in zip(grid.axes(), grid.shape):
        world_axis = int(np.argmax(np.abs(direction)))
        coords = grid.origin[world_axis] + direction[world_axis] * np.arange(n) * spacing
        x = (coords - centre[world_axis]) / 100.0
        factors.append(np.exp(coef[world_axis, 0] * x + coef[world_axis, 1] * x * x)
                       .astype(np.float32))
    return factors


def finish_image(image, factors, sigma, seed, max_value=4095):
    """Bias, Rician noise and quantisation: |image*bias + complex noise| -> uint16.

    image: float32 [k, r, c] (already scaled to the stored range); factors:
    the separable bias (bias_field); sigma: noise SD in stored units.
    """
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    f0, f1, f2 = (torch.from_numpy(f) for f in factors)
    real = torch.randn(image.shape, generator=gen).mul_(sigma)
    real.add_(torch.from_numpy(image) * f0[:, None, None] * f1[None, :, None] * f2[None, None, :])
    imag = torch.randn(image.shape, generator=gen).mul_(sigma)
    out = torch.hypot(real, imag, out=real).round_().clamp_(0, max_value)
    return out.to(torch.int32).numpy().astype(np.uint16)
