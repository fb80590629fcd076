"""Figures of the evaluation (matplotlib, Agg backend, PNG).

* side-by-side panels per test image and zoom: LR input, bicubic, every model, HR, each tile with its
  PSNR-Y and vessel Dice for that image; a magnified inset of the most vessel-dense window of the HR
  vessel map; the vessel maps beneath;
* quality vs speed: vessel Dice (mean over the test images, 95 % bootstrap interval) against frames
  per second on a log axis, one colour per model, one marker per zoom, the real-time frame rates
  (:data:`REAL_TIME_FPS`) as lines;
* metrics by zoom, with the same intervals.

Every figure draws a model in the same colour (:func:`model_colour`) and a zoom with the same marker
(:func:`zoom_marker`). ``*_plot`` functions return the matplotlib figure, ``*_figure`` write it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import phases
from .report import model_order

__all__ = [
    "MODEL_COLOURS", "REAL_TIME_FPS", "ZOOM_MARKERS", "model_colour", "zoom_marker",
    "vessel_window", "vessel_overlay", "panel_plot", "panel_figure", "panel_path",
    "quality_speed_plot", "quality_speed_figure", "by_zoom_plot", "by_zoom_figure", "write_figures",
]

#: one colour per model in every figure (tab10/tab20 hues): baselines in greys and browns, the main-line
#: phases (:data:`retina_sr.phases.MAIN_LINE`, in chain order) in strong hues; a model not listed (a
#: modification variant) gets one of :data:`_SPARE_COLOURS`, picked from its name, so it too keeps its
#: colour from one report to the next
_BASELINE_COLOURS = {
    "input": "#7f7f7f", "nearest": "#c7c7c7", "bicubic": "#525252", "lanczos": "#8c564b",
    "opencv_espcn": "#c49c94", "opencv_fsrcnn": "#dbdb8d", "opencv_lapsrn": "#bcbd22",
}
#: the phases' hues in chain order (l1 blue, perceptual green, adversarial red); the last three (tab20b's
#: darks) are for phases added later
_PHASE_COLOURS = ("#1f77b4", "#2ca02c", "#d62728", "#393b79", "#637939", "#843c39")
if len(phases.MAIN_LINE) > len(_PHASE_COLOURS):  # pragma: no cover - a new phase needs a hue here
    raise RuntimeError(f"figures._PHASE_COLOURS has {len(_PHASE_COLOURS)} hues for {len(phases.MAIN_LINE)} "
                       "main-line phases: add one")
MODEL_COLOURS = {**_BASELINE_COLOURS, **dict(zip(phases.MAIN_LINE, _PHASE_COLOURS)), "hr": "#000000"}
_SPARE_COLOURS = ("#9467bd", "#ff7f0e", "#17becf", "#e377c2", "#aec7e8", "#98df8a", "#ff9896", "#c5b0d5",
                  "#ffbb78", "#9edae5", "#f7b6d2")
#: one marker per zoom factor in every figure
ZOOM_MARKERS = {1: "o", 2: "s", 3: "P", 4: "D", 6: "X", 8: "^", 16: "v"}
#: video frame rates a surgical microscope or fundus video camera delivers: a model at or above the
#: line keeps up with the live picture (batch 1, the test image size)
REAL_TIME_FPS = (30.0, 60.0)
#: bootstrap resamples for the figures' intervals (compare.py's 10 000 are for the report's verdicts)
_FIG_BOOT = 2000


def model_colour(name: str) -> str:
    """The fixed colour of model ``name`` (hex); unknown names map to a spare colour by their CRC32."""
    if name in MODEL_COLOURS:
        return MODEL_COLOURS[name]
    return _SPARE_COLOURS[zlib.crc32(name.encode()) % len(_SPARE_COLOURS)]


def zoom_marker(zoom: float) -> str:
    return ZOOM_MARKERS.get(int(zoom), "*")


def _save(fig, path: str | Path) -> Path:
    """Write (creating the folder) and close a figure."""
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


def _interval(values: Iterable[float]) -> tuple[float, float, float, int]:
    """Mean, 95 % percentile-bootstrap interval of the mean, and count of the finite ``values``."""
    from .compare import bootstrap_ci

    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0
    lo, hi = bootstrap_ci(v, n_boot=_FIG_BOOT) if v.size > 1 else (float(v[0]), float(v[0]))
    return float(v.mean()), lo, hi, int(v.size)


def _per_image(rows: pd.DataFrame | None, model: str, zoom: float, metric: str) -> pd.Series | None:
    if rows is None or rows.empty or metric not in rows.columns:
        return None
    sel = rows[(rows["model"] == model) & (rows["zoom"] == zoom)][metric]
    vals = pd.to_numeric(sel, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return vals if len(vals) else None


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


def _tile_scores(img: np.ndarray, ves: np.ndarray | None, panel: dict) -> dict[str, float]:
    """PSNR-Y and vessel Dice of one tile against HR, both over the segmenter's region (the retina),
    with the evaluation's own metric functions, so a tile says what the table says for this image."""
    from .metrics import dice, psnr

    out = {"psnr_y": psnr(img, panel["hr"], panel.get("region", panel.get("fov")), "y")}
    hr_ves = panel["vessels"].get("hr")
    if ves is not None and hr_ves is not None:
        out["vessel_dice"] = dice(ves, hr_ves, panel.get("region"))
    return out


def _tile_label(scores: Mapping[str, float]) -> str:
    parts = []
    p = scores.get("psnr_y")
    if p is not None and math.isfinite(p):
        parts.append(f"PSNR-Y {p:.2f} dB")
    d = scores.get("vessel_dice")
    if d is not None and math.isfinite(d):
        parts.append(f"vessel Dice {d:.3f}")
    return "\n".join(parts)


def panel_plot(panel: dict, zoom: int, image_id: str, models: list[str]):
    """One test image at one zoom: columns LR, bicubic (or input), each model, HR; rows image (its
    PSNR-Y and vessel Dice written on it, its frame in the model's colour), inset, vessel agreement."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    hr = panel["hr"]
    h, w = hr.shape[:2]
    lr_disp = cv2.resize(panel["lr"], (w, h), interpolation=cv2.INTER_NEAREST)
    lr_name = "nearest" if zoom > 1 else "input"
    # the LR column's scores are those of its nearest-neighbour enlargement (what it shows), when scored
    cols: list[tuple[str, str, np.ndarray, np.ndarray | None]] = [
        (f"LR input (x{zoom})", lr_name, panel["outputs"].get(lr_name, lr_disp), panel["vessels"].get(lr_name))]
    if zoom > 1 and "bicubic" in panel["outputs"]:
        cols.append(("bicubic", "bicubic", panel["outputs"]["bicubic"], panel["vessels"].get("bicubic")))
    for m in models:
        if m in panel["outputs"]:
            cols.append((m, m, panel["outputs"][m], panel["vessels"].get(m)))
    cols.append(("HR (reference)", "hr", hr, panel["vessels"].get("hr")))
    hr_ves = panel["vessels"]["hr"]
    y0, x0, side = vessel_window(hr_ves, panel.get("region"))
    n = len(cols)
    fig, axes = plt.subplots(3, n, figsize=(2.3 * n, 7.4), squeeze=False)
    for j, (title, key, img, ves) in enumerate(cols):
        ax = axes[0, j]
        ax.imshow(lr_disp if j == 0 else img)
        ax.add_patch(Rectangle((x0, y0), side, side, fill=False, edgecolor="yellow", linewidth=1))
        colour = model_colour(key)
        ax.set_title(title, fontsize=9, color="black")
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        label = "reference" if key == "hr" else _tile_label(_tile_scores(img, ves, panel))
        if label:
            ax.text(0.02, 0.02, label, transform=ax.transAxes, fontsize=7, color="white", va="bottom",
                    ha="left", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "edgecolor": "none"})
        axes[1, j].imshow((lr_disp if j == 0 else img)[y0 : y0 + side, x0 : x0 + side], interpolation="nearest")
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
    fig.suptitle(f"{image_id} - zoom x{zoom} (tiles: this image's PSNR-Y over the retina, vessel Dice vs HR)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def panel_figure(panel: dict, zoom: int, image_id: str, models: list[str], path: str | Path) -> Path:
    """:func:`panel_plot` written to ``path``."""
    return _save(panel_plot(panel, zoom, image_id, models), path)


def _device_note(agg: pd.DataFrame) -> str:
    devs = sorted({str(d) for d in agg.get("device", pd.Series(dtype=object)).dropna().unique()})
    return f" on {', '.join(devs)}" if devs else ""


def quality_speed_plot(agg: pd.DataFrame, rows: pd.DataFrame | None = None,
                       frame_rates: Iterable[float] = REAL_TIME_FPS):
    """Vessel Dice vs frames per second (log axis): a point per model and zoom (colour = model, marker =
    zoom), its 95 % bootstrap interval over the test images when ``rows`` (per image) are given, and a
    vertical line per real-time frame rate."""
    plt = _plt()
    from matplotlib.lines import Line2D

    d = agg[agg["fps"].notna() & agg["vessel_dice"].notna()]
    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    names = model_order(d["model"])
    zooms = sorted(int(z) for z in d["zoom"].unique())
    for m in names:
        for z in zooms:
            r = d[(d["model"] == m) & (d["zoom"] == z)]
            if r.empty:
                continue
            x, y = float(r["fps"].iloc[0]), float(r["vessel_dice"].iloc[0])
            vals = _per_image(rows, m, z, "vessel_dice")
            if vals is not None and len(vals) > 1:
                _, lo, hi, _ = _interval(vals)
                ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none",
                            ecolor=model_colour(m), elinewidth=1, capsize=2, alpha=0.8)
            ax.scatter([x], [y], color=model_colour(m), marker=zoom_marker(z), s=45, edgecolors="black",
                       linewidths=0.5, zorder=3)
    ax.set_xscale("log")
    for fr in frame_rates:
        ax.axvline(fr, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"{fr:g} FPS video (real time)", (fr, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=7, color="dimgrey", xytext=(-2, -4), textcoords="offset points")
    ax.set_xlabel(f"speed: frames per second (batch 1, test image size{_device_note(d)}; log scale)")
    ax.set_ylabel("vessel Dice vs HR vessels (0-1, higher is better)")
    ax.set_title("Quality vs speed (mean over test images, 95 % bootstrap interval)")
    ax.grid(True, which="both", alpha=0.3)
    if names:
        model_handles = [Line2D([], [], color=model_colour(m), marker="o", linestyle="none", markersize=7, label=m)
                         for m in names]
        zoom_handles = [Line2D([], [], color="grey", marker=zoom_marker(z), linestyle="none", markersize=7,
                               markeredgecolor="black", label=f"x{z}") for z in zooms]
        leg = ax.legend(handles=model_handles, title="model", fontsize=8, title_fontsize=8,
                        loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.add_artist(leg)
        ax.legend(handles=zoom_handles, title="zoom", fontsize=8, title_fontsize=8, loc="lower left",
                  bbox_to_anchor=(1.01, 0.0))
    fig.tight_layout(rect=(0, 0, 0.8, 1))  # the legends stand right of the axes
    return fig


def quality_speed_figure(agg: pd.DataFrame, path: str | Path, rows: pd.DataFrame | None = None,
                         frame_rates: Iterable[float] = REAL_TIME_FPS) -> Path:
    """:func:`quality_speed_plot` written to ``path``."""
    return _save(quality_speed_plot(agg, rows, frame_rates), path)


#: axis label (with unit or range) of each metric in the by-zoom figure
METRIC_LABELS = {
    "psnr_y": "PSNR-Y over the retina (dB)", "psnr_rgb": "PSNR-RGB over the retina (dB)",
    "ssim_y": "SSIM-Y (0-1)", "ssim_rgb": "SSIM-RGB (0-1)", "vessel_dice": "vessel Dice vs HR (0-1)",
    "vessel_cldice": "vessel clDice vs HR (0-1)", "manual_dice": "Dice vs manual vessels (0-1)",
    "manual_cldice": "clDice vs manual vessels (0-1)", "checkerboard": "checkerboard energy (HR = 1)",
    "fps": "frames per second", "ms": "ms per image",
}


def by_zoom_plot(agg: pd.DataFrame, rows: pd.DataFrame | None = None,
                 metrics: tuple[str, ...] = ("psnr_y", "ssim_y", "vessel_dice", "vessel_cldice")):
    """Each metric against the zoom, one line per model (``hr`` excluded) in its colour, markers by zoom,
    95 % bootstrap intervals over the test images when ``rows`` are given."""
    plt = _plt()

    d = agg[agg["model"] != "hr"]
    zs = sorted(int(z) for z in d["zoom"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.0), squeeze=False)
    for ax, met in zip(axes[0], metrics):
        for m in model_order(d["model"]):
            r = d[d["model"] == m].sort_values("zoom")
            r = r[r[met].notna()] if met in r.columns else r.iloc[0:0]
            if r.empty:
                continue
            xs = [int(z) for z in r["zoom"]]
            ys = [float(v) for v in r[met]]
            ax.plot(xs, ys, color=model_colour(m), label=m, linewidth=1.2)
            for x, y in zip(xs, ys):
                vals = _per_image(rows, m, x, met)
                if vals is not None and len(vals) > 1:
                    _, lo, hi, _ = _interval(vals)
                    ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none",
                                ecolor=model_colour(m), elinewidth=1, capsize=2, alpha=0.8)
                ax.scatter([x], [y], color=model_colour(m), marker=zoom_marker(x), s=25, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(zs, [f"x{z}" for z in zs])
        ax.minorticks_off()
        ax.set_xlabel("zoom factor")
        ax.set_ylabel(METRIC_LABELS.get(met, met))
        ax.set_title(met)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[0, 1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        axes[0, -1].legend(handles, labels, title="model", fontsize=7, title_fontsize=7, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Metrics by zoom (mean over test images, 95 % bootstrap interval)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / (4.2 * len(metrics)), 1))  # room for the legend on the right
    return fig


def by_zoom_figure(agg: pd.DataFrame, path: str | Path, rows: pd.DataFrame | None = None,
                   metrics: tuple[str, ...] = ("psnr_y", "ssim_y", "vessel_dice", "vessel_cldice")) -> Path:
    """:func:`by_zoom_plot` written to ``path``."""
    return _save(by_zoom_plot(agg, rows, metrics), path)


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
    out.append(quality_speed_figure(agg, fig_dir / "quality_speed.png", result.rows))
    out.append(by_zoom_figure(agg, fig_dir / "by_zoom.png", result.rows))
    return out
