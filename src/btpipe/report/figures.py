"""Figures for the evaluation report, returned as ``data:`` URIs.

Everything in the report is inline, so every figure function returns a
string usable as ``<img src=...>``: PNG (matplotlib Agg, or Pillow for the
image thumbnails) or JPEG (photographic montages, which compress ten times
better than PNG). Functions take plain data (frames, arrays, paths) and never
write files.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

# Region colours (RGB 0-255) shared by overlays and plots: ED green, NCR/NET
# red-ish, ET yellow, as most BraTS viewers show them.
TISSUE_RGB = {"ED": (46, 204, 64), "NCR": (230, 57, 70), "NET": (230, 57, 70),
              "ET": (255, 214, 10)}
MASK_OUTLINE_RGB = (0, 174, 239)
REGION_COLOURS = {"WT": "#2e9e44", "TC": "#d62839", "ET": "#e0a800"}
_CYCLE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
          "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


# ----------------------------------------------------------------- encoding
def _pyplot():
    """pyplot on the non-interactive Agg backend (no display on workers)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bytes_to_data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def fig_to_data_uri(fig, dpi: int = 96) -> str:
    """Render a matplotlib figure to a PNG data URI and close it."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        # tight_layout() is applied by each plot; bbox_inches="tight" would render twice.
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return bytes_to_data_uri(buf.getvalue(), "image/png")


def pil_to_data_uri(img, fmt: str = "PNG", quality: int = 82) -> str:
    # No optimize=True: it multiplies encoding time for a few percent of size.
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        return bytes_to_data_uri(buf.getvalue(), "image/jpeg")
    img.save(buf, format="PNG", compress_level=6)
    return bytes_to_data_uri(buf.getvalue(), "image/png")


def image_file_thumbnail(path, max_side: int = 720, quality: int = 80) -> str:
    """A QC montage (any Pillow-readable file) downscaled to `max_side`, as JPEG.

    The report shows it small and opens the same URI larger on click, so one
    moderate-size copy serves both and keeps 100 subjects within ~25 MB.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "P"):
            # Flatten transparency onto white so JPEG does not turn it black.
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.split()[-1])
            img = flat
        img.thumbnail((max_side, max_side), Image.LANCZOS)
        return pil_to_data_uri(img, "JPEG", quality=quality)


# ------------------------------------------------------ segmentation overlay
def _voxel_axes(affine) -> tuple[list[int], list[bool]]:
    """Voxel axis holding world x, y, z (RAS) and whether each runs backwards."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    axes = [int(np.flatnonzero(ornt[:, 0] == world)[0]) for world in range(3)]
    flips = [bool(ornt[a, 1] < 0) for a in axes]
    return axes, flips


def _axial_slice(data, axes, flips, z: int) -> np.ndarray:
    """Axial slice number ``z`` (counted inferior to superior) as [x, y] in RAS order.

    `data` is an array or a nibabel array proxy (``img.dataobj``); a proxy
    reads only that slice, so a compressed volume is decompressed at most up
    to the slice, never copied whole.
    """
    zx = axes[2]
    index = data.shape[zx] - 1 - z if flips[2] else z
    slicer = [slice(None)] * len(data.shape)
    slicer[zx] = index
    plane = np.asarray(data[tuple(slicer)])
    if plane.ndim > 2:  # 4-D image: first volume
        plane = plane[..., 0]
    remaining = [a for a in range(3) if a != zx]  # voxel axes left in `plane`, in order
    plane = plane.transpose([remaining.index(axes[0]), remaining.index(axes[1])])
    if flips[0]:
        plane = plane[::-1]
    if flips[1]:
        plane = plane[:, ::-1]
    return plane


def _to_display(slice_xy: np.ndarray) -> np.ndarray:
    """[x, y] in RAS order -> [rows, cols]: anterior at the top, patient right on the left
    of the image as seen from above (radiological view is x flipped; we keep RAS)."""
    return np.rot90(slice_xy)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of a 2-D boolean mask (4-neighbourhood)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return m
    padded = np.pad(m, 1, constant_values=False)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                & padded[1:-1, :-2] & padded[1:-1, 2:])
    return m & ~interior


def _window(gray: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Intensities -> uint8 with a robust 1-99 percentile window."""
    values = gray[mask] if mask is not None and mask.any() else gray[gray != 0]
    if values.size == 0:
        values = gray.ravel()
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    if not np.isfinite(hi - lo) or hi <= lo:
        hi = lo + 1.0
    return (np.clip((gray - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def largest_tumour_slice(seg: np.ndarray) -> int:
    """Axial index (last axis) with the most labelled voxels; centre if none."""
    per_slice = (np.asarray(seg) > 0).reshape(-1, seg.shape[-1]).sum(axis=0)
    if per_slice.max(initial=0) == 0:
        return seg.shape[-1] // 2
    return int(np.argmax(per_slice))


def overlay_arrays(t1ce: np.ndarray, seg: np.ndarray | None, brain: np.ndarray | None,
                   convention: dict[int, str], alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 overlay of labels (filled, translucent) and brain outline on a slice."""
    body = brain.astype(bool) if brain is not None else None
    rgb = np.repeat(_window(t1ce.astype(np.float32), body)[..., None], 3, axis=2)
    rgb = rgb.astype(np.float32)
    if seg is not None:
        for value, name in convention.items():
            sel = seg == value
            if sel.any():
                colour = np.array(TISSUE_RGB.get(name, (255, 0, 255)), np.float32)
                rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
    if body is not None:
        rgb[_outline(body)] = MASK_OUTLINE_RGB
    return rgb.clip(0, 255).astype(np.uint8)


def segmentation_overlay(t1ce_path, seg_path=None, brain_mask_path=None,
                         convention: dict[int, str] | None = None,
                         min_side: int = 120) -> tuple[str, int]:
    """PNG data URI of the axial T1ce slice through the largest tumour area.

    Labels are drawn translucent in their tissue colour and the brain mask as
    an outline. Returns (uri, slice index in the RAS-reoriented volume).
    Missing seg or mask simply are not drawn; a missing T1ce raises
    FileNotFoundError (the caller reports "not available").
    """
    import nibabel as nib
    from PIL import Image

    convention = convention or {1: "NCR", 2: "ED", 4: "ET"}
    t1ce_img = nib.load(str(t1ce_path))
    shape = t1ce_img.shape[:3]
    axes, flips = _voxel_axes(t1ce_img.affine)
    seg_img = nib.load(str(seg_path)) if seg_path and Path(seg_path).exists() else None
    mask_img = (nib.load(str(brain_mask_path))
                if brain_mask_path and Path(brain_mask_path).exists() else None)
    seg_slice = None
    z = shape[axes[2]] // 2
    if seg_img is not None and seg_img.shape[:3] == shape:
        # Labels are small integers: load them whole to find the largest tumour slice.
        seg_vol = np.asarray(seg_img.dataobj)
        if seg_vol.ndim > 3:
            seg_vol = seg_vol[..., 0]
        seg_ras = np.moveaxis(seg_vol > 0, axes, (0, 1, 2))
        z = largest_tumour_slice(seg_ras[:, :, ::-1] if flips[2] else seg_ras)
        seg_slice = _axial_slice(seg_vol, axes, flips, z)
    t1ce_slice = _axial_slice(t1ce_img.dataobj, axes, flips, z).astype(np.float32)
    mask_slice = None
    if mask_img is not None and mask_img.shape[:3] == shape:
        mask_slice = _axial_slice(mask_img.dataobj, axes, flips, z) > 0
    rgb = overlay_arrays(_to_display(t1ce_slice),
                         None if seg_slice is None else _to_display(seg_slice),
                         None if mask_slice is None else _to_display(mask_slice),
                         convention)
    img = Image.fromarray(rgb, "RGB")
    # The browser scales the image up; only tiny grids are enlarged here.
    scale = max(1, int(np.ceil(min_side / max(img.size))))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return pil_to_data_uri(img, "PNG"), z


# ------------------------------------------------------------ plots (Agg)
def _colour(i: int) -> str:
    return _CYCLE[i % len(_CYCLE)]


def seg_boxplots(metrics: pd.DataFrame, metrics_to_show=("dice", "hd95")) -> str:
    """Box plots per region (WT/TC/ET), one panel per metric, points overlaid.

    `metrics`: long table subject, region, metric, value.
    """
    plt = _pyplot()
    shown = [m for m in metrics_to_show if (metrics["metric"] == m).any()]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], shown):
        sub = metrics[metrics["metric"] == metric]
        regions = [r for r in ("WT", "TC", "ET") if (sub["region"] == r).any()]
        data = [sub.loc[sub["region"] == r, "value"].dropna().to_numpy(float) for r in regions]
        box = ax.boxplot(data, patch_artist=True, showmeans=True, widths=0.55,
                         meanprops={"marker": "D", "markerfacecolor": "white",
                                    "markeredgecolor": "black", "markersize": 5})
        for patch, region in zip(box["boxes"], regions):
            patch.set_facecolor(REGION_COLOURS.get(region, "#999"))
            patch.set_alpha(0.45)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=9,
                       color="black", alpha=0.55, zorder=3)
        ax.set_xticks(range(1, len(regions) + 1), regions)
        ax.set_title({"dice": "Dice", "hd95": "HD95 (mm)"}.get(metric, metric))
        if metric in ("dice", "sensitivity", "specificity"):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def training_curves(log: pd.DataFrame) -> str:
    """Training loss and validation Dice against step, one colour per model."""
    plt = _pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.4))
    models = list(dict.fromkeys(log["model"])) if "model" in log else ["model"]
    for i, model in enumerate(models):
        part = log[log["model"] == model] if "model" in log else log
        part = part.sort_values("step")
        if "train_loss" in part:
            ok = part["train_loss"].notna()
            ax_loss.plot(part.loc[ok, "step"], part.loc[ok, "train_loss"], color=_colour(i),
                         lw=1.2, label=str(model))
        col = "val_dice_mean" if "val_dice_mean" in part else None
        if col is None:
            dice_cols = [c for c in part.columns if c.startswith("val_dice_")]
            if dice_cols:
                part = part.assign(val_dice_mean=part[dice_cols].mean(axis=1))
                col = "val_dice_mean"
        if col:
            ok = part[col].notna()
            ax_dice.plot(part.loc[ok, "step"], part.loc[ok, col], color=_colour(i),
                         marker="o", ms=3, lw=1.2, label=str(model))
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax_dice.set(xlabel="step", ylabel="mean Dice (WT, TC, ET)", title="Validation Dice",
                ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    ax_dice.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig_to_data_uri(fig)


def kaplan_meier_panel(pred: pd.DataFrame, model: str) -> str:
    """Kaplan-Meier curves (95% CI bands) by predicted risk group, log-rank p."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.5))
    groups = _ordered_groups(pred["risk_group"])
    for i, group in enumerate(groups):
        part = pred[pred["risk_group"] == group]
        event = part["event"].astype(bool).to_numpy()
        time = part["time"].astype(float).to_numpy()
        kwargs = {"conf_type": "log-log"} if event.any() else {}
        result = kaplan_meier_estimator(event, time, **kwargs)
        t, s = result[0], result[1]
        colour = _colour(i)
        ax.step(np.r_[0, t], np.r_[1, s], where="post", color=colour, lw=1.6,
                label=f"{group} (n={len(part)}, events={int(event.sum())})")
        if len(result) > 2:
            lo, hi = result[2]
            ax.fill_between(np.r_[0, t], np.r_[1, lo], np.r_[1, hi], step="post",
                            color=colour, alpha=0.15, lw=0)
    title = model
    if len(groups) > 1 and pred["event"].astype(bool).any():
        y = np.array(list(zip(pred["event"].astype(bool), pred["time"].astype(float))),
                     dtype=[("event", bool), ("time", float)])
        try:
            _, p = compare_survival(y, pred["risk_group"].astype(str).to_numpy())
            title += f"  (log-rank p = {p:.3g})"
        except ValueError:
            pass
    ax.set(xlabel="days", ylabel="survival probability", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    return fig_to_data_uri(fig)


def _ordered_groups(series: pd.Series) -> list:
    """Risk groups in a natural order (low before high; numbers ascending)."""
    values = list(pd.unique(series.dropna()))
    rank = {"low": 0, "medium": 1, "mid": 1, "intermediate": 1, "high": 2}
    try:
        return sorted(values, key=lambda v: (rank.get(str(v).lower(), 5), float(v)
                                             if not isinstance(v, str) else 0, str(v)))
    except (TypeError, ValueError):
        return sorted(values, key=lambda v: (rank.get(str(v).lower(), 5), str(v)))


def time_auc_curves(summary: pd.DataFrame) -> str:
    """Time-dependent AUC against horizon per model (mean and 95% CI over folds).

    `summary`: model, horizon, mean, lo, hi.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    for i, (model, part) in enumerate(summary.groupby("model", sort=False)):
        part = part.sort_values("horizon")
        ax.plot(part["horizon"], part["mean"], marker="o", color=_colour(i), label=str(model))
        if part["lo"].notna().any():
            ax.fill_between(part["horizon"], part["lo"], part["hi"], color=_colour(i),
                            alpha=0.15, lw=0)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="horizon (days)", ylabel="cumulative/dynamic AUC", ylim=(0, 1),
           title="Time-dependent AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def calibration_plot(curves: dict[float, dict[str, pd.DataFrame]]) -> str:
    """Predicted vs observed (Kaplan-Meier) survival at each horizon.

    `curves`: {horizon: {model: frame(predicted, observed)}}, one panel per horizon.
    """
    plt = _pyplot()
    horizons = sorted(curves)
    fig, axes = plt.subplots(1, len(horizons), figsize=(3.6 * len(horizons), 3.4),
                             squeeze=False)
    for ax, horizon in zip(axes[0], horizons):
        for i, (model, frame) in enumerate(curves[horizon].items()):
            ax.plot(frame["predicted"], frame["observed"], marker="o", color=_colour(i),
                    label=str(model))
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted survival",
               ylabel="observed (KM)", title=f"{horizon:g} days")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def embedding_scatter(emb: pd.DataFrame) -> str:
    """2-D embedding coloured by survival class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    if "survival_class" in emb:
        for i, cls in enumerate(_ordered_groups(emb["survival_class"].astype(str))):
            part = emb[emb["survival_class"].astype(str) == cls]
            ax.scatter(part["x"], part["y"], s=16, color=_colour(i), label=str(cls), alpha=0.8)
        ax.legend(title="survival class", fontsize=8)
    else:
        ax.scatter(emb["x"], emb["y"], s=16, color=_colour(0))
    ax.set(xlabel="x", ylabel="y", title="Embedding")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def attention_plot(att: pd.DataFrame, model: str, x: str, y: str,
                   group: str | None = None) -> str:
    """Mean attention against relative slice position (one line per plane)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.3))
    parts = att.groupby(group, sort=False) if group else [(None, att)]
    for i, (name, part) in enumerate(parts):
        part = part.groupby(x, as_index=False)[y].mean().sort_values(x)
        ax.plot(part[x], part[y], marker="o", ms=3, color=_colour(i),
                label=str(name) if name is not None else None)
    if group:
        ax.legend(fontsize=8, title=group)
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "), title=f"Attention: {model}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def feature_missing_hist(missing_rate: pd.Series) -> str:
    """Histogram of per-feature missing rates."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    ax.hist(missing_rate.to_numpy(float) * 100, bins=np.linspace(0, 100, 21),
            color=_colour(0), alpha=0.8)
    ax.set(xlabel="missing (% of subjects)", ylabel="features",
           title="Missing values per feature")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_to_data_uri(fig)
