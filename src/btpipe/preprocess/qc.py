"""Quality control: the per-subject montage and the cohort table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import read_json, save_figure


def _planes(vol: np.ndarray, centre):
    """Axial, coronal and sagittal slices through ``centre``, displayed upright.

    Arrays are LPS-indexed (i: R->L, j: A->P, k: I->S), so radiological
    display needs only transposes and a vertical flip for superior-up.
    """
    i, j, k = (int(round(c)) for c in centre)
    axial = vol[:, :, k].T            # rows A->P, columns R->L (radiological)
    coronal = vol[:, j, :].T[::-1]    # rows S->I
    sagittal = vol[i, :, :].T[::-1]   # rows S->I, columns A->P
    return axial, coronal, sagittal


def montage(path, images: dict, mask: np.ndarray, title: str = "") -> None:
    """Write a small PNG: 3 planes x each sequence, brain-mask outline in red.

    ``images`` maps sequence name -> LPS-indexed array on the mask's grid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inside = np.argwhere(mask > 0)
    centre = inside.mean(axis=0) if len(inside) else np.array(mask.shape) / 2
    names = list(images)
    fig, axes = plt.subplots(3, len(names), figsize=(1.8 * len(names), 5.4), dpi=80)
    axes = np.atleast_2d(axes).reshape(3, len(names))
    mplanes = _planes(mask.astype(float), centre)
    for c, name in enumerate(names):
        vol = images[name]
        sel = vol[mask > 0] if len(inside) else vol.ravel()
        vmax = float(np.percentile(sel, 99.5)) if sel.size else 1.0
        for r, (plane, mplane) in enumerate(zip(_planes(vol, centre), mplanes)):
            ax = axes[r, c]
            ax.imshow(plane, cmap="gray", vmin=0, vmax=vmax or 1.0, interpolation="nearest")
            if mplane.any() and 0 < mplane.max():
                ax.contour(mplane, levels=[0.5], colors="r", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(path, fig, dpi=80)
    plt.close(fig)


def cohort_qc(qc_json_paths):
    """One row per subject from per-subject qc.json files (flags joined by ';').

    Columns: subject, space, backend, brain_volume_ml, mask_components,
    flags, n_flags, similarity columns (``sim_{pair}_{metric}``), timings
    (``time_{step}_s``), orientations in.
    """
    import pandas as pd

    rows = []
    for p in qc_json_paths:
        q = read_json(p)
        row = {
            "subject": q.get("subject", Path(p).parent.parent.name),
            "space": q.get("space"),
            "backend": q.get("backend"),
            "skull_strip": q.get("skull_strip"),
            "brain_volume_ml": q.get("brain_volume_ml"),
            "mask_components": q.get("mask_components"),
            "flags": ";".join(q.get("flags", [])),
            "n_flags": len(q.get("flags", [])),
        }
        for pair, vals in (q.get("registration") or {}).items():
            for metric, v in (vals or {}).items():
                if isinstance(v, (int, float)) or v is None:
                    row[f"sim_{pair}_{metric}"] = v
        for step, secs in (q.get("timings_s") or {}).items():
            row[f"time_{step}_s"] = secs
        for seq, code in (q.get("orientation_in") or {}).items():
            row[f"orientation_{seq}"] = code
        rows.append(row)
    return pd.DataFrame(rows)
