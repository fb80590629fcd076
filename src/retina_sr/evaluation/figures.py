"""Figures of the evaluation (matplotlib, Agg backend, PNG).

* side-by-side panels per test image and zoom: LR input, bicubic, every model, HR; a magnified inset
  of the most vessel-dense window of the HR vessel map; the vessel maps beneath;
* quality vs speed (vessel Dice vs FPS, log axis);
* metrics by zoom.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .report import model_order

__all__ = ["vessel_window", "vessel_overlay", "panel_figure", "panel_path", "quality_speed_figure", "by_zoom_figure", "write_figures"]



def _save(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def vessel_window(vessels: np.ndarray, region: np.ndarray | None = None, frac: float = 1 / 6) -> tuple[int, int, int]:
    """``(y0, x0, side)`` of the square window (``frac`` of the image side) with the highest vessel density.

    Only windows fully inside ``region`` (e.g. the eroded FOV) compete when any exists; ties go to the
    first in raster order, so the choice is deterministic.
    """
    v = np.asarray(vessels, dtype=np.float32)
    h, w = v.shape
    side = max(8, int(round(min(h, w) * frac)))
    side = min(side, h, w)
    dens = cv2.boxFilter(v, -1, (side, side), normalize=True, borderType=cv2.BORDER_CONSTANT)
    # box centred at (cy, cx) -> top-left (cy - side//2, cx - side//2); keep windows inside the image
    valid = np.zeros_like(v, dtype=bool)
    valid[side // 2 : h - (side - side // 2) + 1, side // 2 : w - (side - side // 2) + 1] = True
    if region is not None:
        inside = cv2.boxFilter(np.asarray(region, np.float32), -1, (side, side), normalize=True,
                               borderType=cv2.BORDER_CONSTANT) >= 0.999
        if (valid & inside).any():
            valid &= inside
    dens = np.where(valid, dens, -1.0)
    cy, cx = np.unravel_index(int(np.argmax(dens)), dens.shape)
    return int(cy - side // 2), int(cx - side // 2), side


def vessel_overlay(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """RGB agreement map of an output's vessels with the HR vessels: white = both, red = only in the
    output (false positive), cyan = only in HR (missed). The HR map itself comes out white."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    out = np.zeros((*pred.shape, 3), np.uint8)
    out[pred & ref] = (255, 255, 255)
    out[pred & ~ref] = (255, 60, 60)
    out[~pred & ref] = (0, 190, 255)
    return out


def panel_figure(panel: dict, zoom: int, image_id: str, models: list[str], path: str | Path) -> Path:
    """One test image at one zoom: columns LR, bicubic (or input), each model, HR; rows image, inset, vessels."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    hr = panel["hr"]
    h, w = hr.shape[:2]
    lr_disp = cv2.resize(panel["lr"], (w, h), interpolation=cv2.INTER_NEAREST)
    cols: list[tuple[str, np.ndarray, np.ndarray | None]] = [(f"LR input (x{zoom})", lr_disp, panel["vessels"].get("nearest" if zoom > 1 else "input"))]
    if zoom > 1 and "bicubic" in panel["outputs"]:
        cols.append(("bicubic", panel["outputs"]["bicubic"], panel["vessels"].get("bicubic")))
    for m in models:
        if m in panel["outputs"]:
            cols.append((m, panel["outputs"][m], panel["vessels"].get(m)))
    cols.append(("HR", hr, panel["vessels"].get("hr")))
    hr_ves = panel["vessels"]["hr"]
    y0, x0, side = vessel_window(hr_ves, panel.get("region"))
    n = len(cols)
    fig, axes = plt.subplots(3, n, figsize=(2.3 * n, 7.2), squeeze=False)
    for j, (title, img, ves) in enumerate(cols):
        ax = axes[0, j]
        ax.imshow(img)
        ax.add_patch(Rectangle((x0, y0), side, side, fill=False, edgecolor="yellow", linewidth=1))
        ax.set_title(title, fontsize=9)
        axes[1, j].imshow(img[y0 : y0 + side, x0 : x0 + side], interpolation="nearest")
        if ves is not None:
            axes[2, j].imshow(vessel_overlay(ves, hr_ves), interpolation="nearest")
        else:
            axes[2, j].text(0.5, 0.5, "n/a", ha="center", va="center", transform=axes[2, j].transAxes)
        for i in range(3):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("vessel-rich inset")
    axes[2, 0].set_ylabel("vessels (white both, red extra,\ncyan missed vs HR)", fontsize=8)
    fig.suptitle(f"{image_id} - zoom x{zoom}", fontsize=11)
    return _save(fig, path)


def quality_speed_figure(agg: pd.DataFrame, path: str | Path) -> Path:
    """Vessel Dice vs FPS (log x), one point per model and zoom."""
    plt = _plt()
    d = agg[agg["fps"].notna() & agg["vessel_dice"].notna()]
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = "osD^v<>p*"
    zooms = sorted(d["zoom"].unique())
    names = model_order(d["model"])
    cmap = plt.get_cmap("tab10")
    for mi, m in enumerate(names):
        for zi, z in enumerate(zooms):
            r = d[(d["model"] == m) & (d["zoom"] == z)]
            if r.empty:
                continue
            ax.scatter(r["fps"], r["vessel_dice"], color=cmap(mi % 10), marker=markers[zi % len(markers)],
                       label=m if zi == 0 or not ((d["model"] == m) & (d["zoom"] < z)).any() else None)
            ax.annotate(f"x{int(z)}", (float(r["fps"].iloc[0]), float(r["vessel_dice"].iloc[0])), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("frames per second (log)")
    ax.set_ylabel("vessel Dice vs HR vessels")
    ax.set_title("Quality vs speed")
    ax.grid(True, alpha=0.3)
    if names:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def by_zoom_figure(agg: pd.DataFrame, path: str | Path,
                   metrics: tuple[str, ...] = ("psnr_y", "ssim_y", "vessel_dice", "vessel_cldice")) -> Path:
    """Each metric against the zoom, one line per model (``hr`` excluded)."""
    plt = _plt()
    d = agg[agg["model"] != "hr"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, met in zip(axes[0], metrics):
        for m in model_order(d["model"]):
            r = d[d["model"] == m].sort_values("zoom")
            if r[met].notna().any():
                ax.plot(r["zoom"], r[met], marker="o", label=m)
        ax.set_xscale("log", base=2)
        zs = sorted(d["zoom"].unique())
        ax.set_xticks(zs, [f"x{int(z)}" for z in zs])
        ax.set_title(met)
        ax.grid(True, alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def panel_path(fig_dir: str | Path, image_id: str, zoom: int) -> Path:
    """``<fig_dir>/panel_<id>_x<zoom>.png`` (characters unsafe in file names replaced by ``_``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id)
    return Path(fig_dir) / f"panel_{safe}_x{zoom}.png"


def write_figures(result, agg: pd.DataFrame, fig_dir: str | Path) -> list[Path]:
    """Figures into ``fig_dir``: ``quality_speed.png``, ``by_zoom.png`` and ``panel_<id>_x<s>.png`` for the
    panels kept in ``result.panels`` (those not already drawn through ``run_evaluation(on_panel=...)``)."""
    fig_dir = Path(fig_dir)
    models = [e.name for e in result.models]
    out = []
    for (zoom, image_id), panel in sorted(result.panels.items()):
        out.append(panel_figure(panel, zoom, image_id, models, panel_path(fig_dir, image_id, zoom)))
    out.append(quality_speed_figure(agg, fig_dir / "quality_speed.png"))
    out.append(by_zoom_figure(agg, fig_dir / "by_zoom.png"))
    return out
