"""A synthetic glioma in template space: necrotic core, enhancing rim, edema.

The tumour is an irregular ball (a sphere whose radius is modulated by
smooth noise) with three nested soft fields on a local box of the 1 mm
template grid: f_ncr <= f_tc <= f_wt in [0, 1]. Labels are the 0.5 level
sets (NCR where f_ncr >= .5, else ET where f_tc >= .5, else ED where
f_wt >= .5); images use the soft fields as partial-volume fractions, so
labels and intensities agree. Edema spreads further along white matter and
stays out of the ventricles; everything stays inside the brain mask.

The tumour also pushes the surrounding tissue outward (mass effect): tissue
seen at a point q came from `push_back(q)`, a radial, volume-preserving
shift around the centre that fades out at the edge of the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

from .anatomy import TemplateHead, smooth_noise

WT_CM3_RANGE = (20.0, 120.0)     # whole-tumour volume, drawn log-uniform
_EDGE_MM = 0.6                   # width of the soft boundary of each compartment


@dataclass
class Tumour:
    """A tumour on a box of the template grid.

    centre: template voxel coordinates (float, 3); lo: template voxel index of
    box voxel (0, 0, 0); fields: float32 [4, bx, by, bz] = f_ncr, f_tc, f_wt,
    texture (unit-variance smooth noise); r_tc (mm) and push (fraction of the
    core volume that displaced tissue instead of replacing it) drive the mass
    effect; volumes_mm3: template-space volume per label {1,2,4} and WT.
    """

    centre: np.ndarray
    lo: np.ndarray
    fields: np.ndarray
    r_tc: float
    push: float
    push_radius: float
    radii: dict
    volumes_mm3: dict

    @property
    def hi(self):
        return self.lo + np.array(self.fields.shape[1:]) - 1

    @property
    def radius(self):
        """Radius (voxels) around the centre outside which the fields are 0 and
        nothing is pushed (the window in make_tumour ends at half - 1)."""
        return (self.fields.shape[1] - 1) / 2.0


def _crop(vol, lo, shape):
    """vol[lo : lo+shape] with zeros where the box leaves the volume."""
    out = np.zeros(shape, vol.dtype)
    src = [slice(max(l, 0), min(l + s, n)) for l, s, n in zip(lo, shape, vol.shape)]
    dst = [slice(s.start - l, s.stop - l) for s, l in zip(src, lo)]
    if all(s.stop > s.start for s in src):
        out[tuple(dst)] = vol[tuple(src)]
    return out


def _soft_inside(rho, radius):
    """1 inside the normalised radius 1, 0 outside, with a ~_EDGE_MM soft edge."""
    return expit((1.0 - rho) * (radius / _EDGE_MM * 4.0))


def _pick_centre(head: TemplateHead, rng, min_depth_mm):
    """A template voxel deep enough in supratentorial brain, preferring white matter."""
    depth = head.depth   # 2 mm grid
    z_mm = head.affine[2, 2] * np.arange(0, head.shape[2], 2) + head.affine[2, 3]
    wm2 = head.wm[::2, ::2, ::2]
    ok = (depth >= min_depth_mm) & (wm2 > 0.4) & (z_mm[None, None, :] > -12.0)
    if not ok.any():
        ok = depth >= depth.max() * 0.8
    candidates = np.argwhere(ok)
    pick = candidates[rng.integers(len(candidates))] * 2
    return pick.astype(np.float64) + rng.uniform(-1.0, 1.0, 3)


def make_tumour(head: TemplateHead, rng: np.random.Generator, head_scale: float = 1.0) -> Tumour:
    """Draw a tumour: size, shape, position and mass effect from `rng`.

    head_scale: volume factor of the subject's head relative to the template,
    used to report volumes in the subject's millimetres.
    """
    wt_target = float(np.exp(rng.uniform(*np.log(WT_CM3_RANGE))))  # cm^3, subject space
    r_ed = (3 * wt_target * 1000 / head_scale / (4 * np.pi)) ** (1 / 3)
    r_tc = r_ed * rng.uniform(0.55, 0.8)
    r_ncr = r_tc * rng.uniform(0.35, 0.8)
    push = rng.uniform(0.3, 0.7)

    centre = _pick_centre(head, rng, min_depth_mm=0.8 * r_tc + 4.0)
    half = int(np.ceil(max(1.6 * r_ed, 2.6 * r_tc))) + 3
    lo = np.floor(centre).astype(int) - half
    shape = (2 * half + 1,) * 3

    noise = [smooth_noise(shape, rng, sigma_vox=max(r_tc / 2.5, 3.0)) for _ in range(3)]
    texture = smooth_noise(shape, rng, sigma_vox=2.0, step=2)
    axes = [np.arange(n, dtype=np.float32) + l - c for n, l, c in zip(shape, lo, centre)]
    dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2
                   + axes[2][None, None, :] ** 2)

    brain = ndimage.gaussian_filter(_crop(head.brain, lo, shape), 0.7)
    wm = _crop(head.wm, lo, shape)
    csf = _crop(head.csf, lo, shape)
    inside_brain = np.clip((brain - 0.3) / 0.4, 0.0, 1.0)

    def bumpy(amount, field):   # radius factor; never collapses to <= 0
        return np.maximum(1 + amount * field, 0.3)

    f_tc = _soft_inside(dist / (r_tc * bumpy(0.2, noise[0])), r_tc) * inside_brain
    f_ncr = _soft_inside(dist / (r_ncr * bumpy(0.25, noise[1])), r_ncr) * f_tc
    # Edema: reaches further in white matter, not into the ventricles.
    r_ed_local = r_ed * bumpy(0.25, noise[2]) * (0.75 + 0.4 * wm)
    f_ed = _soft_inside(dist / r_ed_local, r_ed) * inside_brain * (1 - 0.9 * csf)
    # Fields vanish before the sphere inscribed in the box (lets the renderer
    # look only at points inside that sphere).
    window = np.clip((half - 1.0 - dist) / 2.0, 0.0, 1.0)
    f_ed = f_ed * window
    f_tc, f_ncr = f_tc * window, f_ncr * window
    f_wt = np.maximum(f_tc, f_ed)

    fields = np.stack([f_ncr, f_tc, f_wt, texture]).astype(np.float32)
    ncr, tc, wt = (f_ncr >= 0.5), (f_tc >= 0.5), (f_wt >= 0.5)
    vox = head_scale  # template voxels are 1 mm^3; the subject's head is scaled
    volumes = {"NCR": float(ncr.sum() * vox), "ET": float((tc & ~ncr).sum() * vox),
               "ED": float((wt & ~tc).sum() * vox), "WT": float(wt.sum() * vox),
               "TC": float(tc.sum() * vox)}
    return Tumour(centre=centre, lo=lo, fields=fields, r_tc=float(r_tc), push=float(push),
                  push_radius=float(half - 2),
                  radii={"ncr": float(r_ncr), "tc": float(r_tc), "ed": float(r_ed)},
                  volumes_mm3=volumes)


def push_back(rel, tumour: Tumour):
    """Mass effect: where the tissue now at offsets `rel` from the centre came from.

    rel: torch float tensor [n, 3] (template voxels = mm, any axis order).
    Volume-preserving radial shift s(r) = cbrt(r^3 - k r_tc^3) (the core took
    the room of a fraction k of its volume), tapered to zero at push_radius.
    Returns the source offsets, same shape.
    """
    import torch

    r = torch.sqrt((rel * rel).sum(1))
    k_r3 = tumour.push * tumour.r_tc ** 3
    shift = r - torch.clamp(r ** 3 - k_r3, min=0.0) ** (1.0 / 3.0)
    inner, outer = 1.2 * tumour.r_tc, tumour.push_radius
    t = torch.clamp((outer - r) / max(outer - inner, 1e-6), 0.0, 1.0)
    taper = t * t * (3 - 2 * t)
    factor = (r - shift * taper) / torch.clamp(r, min=1e-6)
    return rel * factor[:, None]
