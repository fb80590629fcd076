"""Evaluation figures read as their users expect: one colour per model in every figure, a legend for
the zoom markers, real-time frame rates on a log FPS axis, units on the axes, per-image intervals,
metric values on the panel tiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from retina_sr.evaluation import figures
from retina_sr.evaluation.metrics import dice, psnr

MODELS = ("bicubic", "l1", "adversarial", "modified_subpixel")


def _rows(seed: int = 0) -> pd.DataFrame:
    """Per-image rows: 4 images x models x zooms 2 and 4, with a known spread."""
    rng = np.random.default_rng(seed)
    out = []
    for z in (2, 4):
        for k, m in enumerate(MODELS):
            for i in range(4):
                out.append({"image_id": f"im{i}", "zoom": z, "model": m,
                            "psnr_y": 30 + k - z / 2 + rng.normal(0, 0.5),
                            "ssim_y": 0.8 + 0.02 * k + rng.normal(0, 0.01),
                            "vessel_dice": 0.5 + 0.05 * k - 0.02 * z + rng.normal(0, 0.03),
                            "vessel_cldice": 0.4 + 0.05 * k + rng.normal(0, 0.03)})
    return pd.DataFrame(out)


def _agg(rows: pd.DataFrame, with_hr: bool = True) -> pd.DataFrame:
    agg = rows.groupby(["model", "zoom"], sort=False).mean(numeric_only=True).reset_index()
    speed = {"bicubic": 900.0, "l1": 45.0, "adversarial": 45.0, "modified_subpixel": 20.0}
    agg["fps"] = [speed[m] / (z / 2) for m, z in zip(agg["model"], agg["zoom"])]
    agg["ms"] = 1000 / agg["fps"]
    agg["device"] = "CPU (test)"
    if with_hr:
        agg = pd.concat([agg, pd.DataFrame([{"model": "hr", "zoom": 2}, {"model": "hr", "zoom": 4}])],
                        ignore_index=True)
    return agg


def _colours_by_label(fig) -> dict[str, str]:
    """Legend label -> colour of every legend entry in ``fig``."""
    out = {}
    for ax in fig.axes:
        for leg in [c for c in ax.get_children() if c.__class__.__name__ == "Legend"]:
            for handle, text in zip(leg.legend_handles, leg.get_texts()):
                colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
                out[text.get_text()] = to_hex(colour)
    return out


def test_one_colour_per_model_across_figures():
    rows = _rows()
    agg = _agg(rows)
    qs = figures.quality_speed_plot(agg, rows)
    bz = figures.by_zoom_plot(agg, rows)
    c_qs, c_bz = _colours_by_label(qs), _colours_by_label(bz)
    for m in MODELS:
        assert c_qs[m] == c_bz[m] == to_hex(figures.model_colour(m)), m
    assert len({c_qs[m] for m in MODELS}) == len(MODELS)  # distinct
    # every line of the by-zoom figure is drawn in its model's colour, in every panel
    for ax in bz.axes:
        for line in ax.get_lines():
            if line.get_label() in MODELS:
                assert to_hex(line.get_color()) == to_hex(figures.model_colour(line.get_label()))
    # a variant keeps its colour whatever else is in the report
    assert figures.model_colour("modified_shared") == figures.model_colour("modified_shared")
    assert figures.model_colour("l1") != figures.model_colour("bicubic")


def test_quality_speed_axes_legends_and_real_time_lines():
    rows = _rows()
    fig = figures.quality_speed_plot(_agg(rows), rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert "frames per second" in ax.get_xlabel() and "log" in ax.get_xlabel() and "CPU (test)" in ax.get_xlabel()
    assert "vessel Dice" in ax.get_ylabel() and "0-1" in ax.get_ylabel()
    legends = [c for c in ax.get_children() if c.__class__.__name__ == "Legend"]
    titles = {leg.get_title().get_text(): [t.get_text() for t in leg.get_texts()] for leg in legends}
    assert titles["zoom"] == ["x2", "x4"]
    assert titles["model"] == list(MODELS)  # hr (no speed) is not a point
    markers = {leg.get_title().get_text(): [h.get_marker() for h in leg.legend_handles] for leg in legends}
    assert markers["zoom"] == [figures.zoom_marker(2), figures.zoom_marker(4)]
    # the real-time frame rates: vertical lines at 30 and 60 FPS, labelled
    vlines = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert vlines == [30.0, 60.0]
    texts = [t.get_text() for t in ax.texts]
    assert any("30 FPS" in t and "real time" in t for t in texts) and any("60 FPS" in t for t in texts)


def test_intervals_come_from_the_per_image_rows():
    rows = _rows()
    agg = _agg(rows)
    fig = figures.quality_speed_plot(agg, rows)
    ax = fig.axes[0]
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len(bars) == len(MODELS) * 2  # one interval per model and zoom
    # the l1 x4 interval is the 95 % bootstrap interval of its 4 images' Dice
    from retina_sr.evaluation.compare import bootstrap_ci

    vals = rows[(rows.model == "l1") & (rows.zoom == 4)]["vessel_dice"].to_numpy()
    lo, hi = bootstrap_ci(vals, n_boot=2000)
    segs = [seg for b in bars for seg in b.get_segments()]
    assert any(np.allclose(seg[:, 1], [lo, hi]) for seg in segs)
    # without per-image rows: points only, no invented intervals
    assert not [c for c in figures.quality_speed_plot(agg).axes[0].collections
                if c.__class__.__name__ == "LineCollection"]


def test_by_zoom_units_and_log2_zoom_axis():
    rows = _rows()
    fig = figures.by_zoom_plot(_agg(rows), rows)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[0] == "PSNR-Y over the retina (dB)" and "(0-1)" in labels[1]
    for ax in fig.axes:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "zoom factor"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["x2", "x4"]
        assert "hr" not in [line.get_label() for line in ax.get_lines()]


def _panel(rng) -> dict:
    h = w = 48
    hr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    fov = ((yy - 24) ** 2 + (xx - 24) ** 2) < 22 ** 2
    ves_hr = (np.abs(yy - xx) < 2) & fov
    outputs = {"nearest": np.clip(hr.astype(int) + 9, 0, 255).astype(np.uint8),
               "bicubic": np.clip(hr.astype(int) + 6, 0, 255).astype(np.uint8),
               "l1": np.clip(hr.astype(int) + 2, 0, 255).astype(np.uint8)}
    vessels = {"hr": ves_hr, "nearest": np.roll(ves_hr, 3, 1), "bicubic": np.roll(ves_hr, 2, 1),
               "l1": np.roll(ves_hr, 1, 1)}
    return {"lr": hr[::4, ::4], "hr": hr, "fov": fov, "region": fov, "outputs": outputs, "vessels": vessels}


def test_panel_tiles_carry_their_metric_values_and_model_colours():
    panel = _panel(np.random.default_rng(0))
    fig = figures.panel_plot(panel, 4, "img01", ["l1"])
    top = fig.axes[:4]  # first row: LR, bicubic, l1, HR
    assert [ax.get_title() for ax in top] == ["LR input (x4)", "bicubic", "l1", "HR (reference)"]
    for ax, key in zip(top[:3], ("nearest", "bicubic", "l1")):
        p = psnr(panel["outputs"][key], panel["hr"], panel["fov"], "y")
        d = dice(panel["vessels"][key], panel["vessels"]["hr"], panel["region"])
        text = " ".join(t.get_text() for t in ax.texts)
        assert f"PSNR-Y {p:.2f} dB" in text and f"vessel Dice {d:.3f}" in text, (key, text)
        assert to_hex(ax.spines["left"].get_edgecolor()) == to_hex(figures.model_colour(key))
    assert "reference" in " ".join(t.get_text() for t in top[3].texts)


def test_write_figures_uses_the_rows(tmp_path):
    rows = _rows()

    class Result:
        models = []
        panels = {(4, "img01"): _panel(np.random.default_rng(1))}

    Result.rows = rows
    files = figures.write_figures(Result(), _agg(rows), tmp_path)
    assert [f.name for f in files] == ["panel_img01_x4.png", "quality_speed.png", "by_zoom.png"]
    assert all(f.stat().st_size > 1000 for f in files)


@pytest.mark.parametrize("zoom, marker", [(1, "o"), (2, "s"), (4, "D"), (8, "^")])
def test_zoom_markers_are_fixed(zoom, marker):
    assert figures.zoom_marker(zoom) == marker


def test_every_main_line_phase_has_its_own_fixed_colour_and_place():
    """The colours and the report order follow the phase table (retina_sr.phases), not a copied list."""
    from retina_sr import phases
    from retina_sr.evaluation.report import model_order

    colours = [figures.model_colour(p) for p in phases.MAIN_LINE]
    assert all(p in figures.MODEL_COLOURS for p in phases.MAIN_LINE)
    assert len(set(colours)) == len(colours)
    others = {c for n, c in figures.MODEL_COLOURS.items() if n not in phases.MAIN_LINE} | set(figures._SPARE_COLOURS)
    assert not others & set(colours)
    assert figures.model_colour("l1") == "#1f77b4" and figures.model_colour("adversarial") == "#d62728"  # as before
    names = ["hr", "modified_shared", *reversed(phases.MAIN_LINE), "bicubic"]
    assert model_order(names) == ["bicubic", *phases.MAIN_LINE, "modified_shared", "hr"]
