"""Tables of the evaluation: ``metrics.json`` (DVC metrics), ``results.csv``, ``summary.md``, plot CSVs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import phases
from .compare import COMPARED_METRICS, compare_to_reference, comparison_markdown
from .runner import IMAGE_METRICS, SPEED_METRICS, EvaluationResult

__all__ = [
    "HIGHER_IS_BETTER",
    "IDEAL_VALUE",
    "CONVENTIONS",
    "aggregate",
    "metrics_dict",
    "HEADLINE",
    "headline_metrics",
    "write_metrics_json",
    "write_results_csv",
    "write_plot_csvs",
    "summary_markdown",
    "write_reports",
    "model_order",
]

#: direction of each metric whose best is an extreme
HIGHER_IS_BETTER = {
    "psnr_y": True, "psnr_rgb": True, "ssim_y": True, "ssim_rgb": True,
    "vessel_dice": True, "vessel_cldice": True, "manual_dice": True, "manual_cldice": True,
    "thinnest_calibre": False, "ms": False, "fps": True,
}
#: metrics whose best is a value, not an extreme: the checkerboard energy is relative to HR, so 1 is
#: "like HR"; above 1 adds periodic artifacts or noise, below 1 is smoother than HR (also a loss)
IDEAL_VALUE = {"checkerboard": 1.0}

CONVENTIONS = """\
- **Region**: every score is taken over the retina, the field of view (FOV) eroded by 2 % of the image
  side (10 px at 512 px), so the aperture's edge (a step of ~190 grey levels, 0 outside) does not count:
  with it in, its few rows outweighed the whole retina in the MSE.
- **PSNR** (dB, peak 255) over that region, no border shave. `psnr_y`: BT.601
  luminance Y in [16, 235] (MATLAB `rgb2ycbcr`, unrounded) as in the super-resolution literature;
  `psnr_rgb`: MSE over the three RGB channels.
- **SSIM** (Wang et al. 2004; Gaussian window sigma 1.5, K1 0.01, K2 0.03, L 255) averaged over the
  region eroded by the 5-px window radius; `ssim_rgb` is the mean over R, G, B.
- **Vessels**: fixed segmenter (green channel, CLAHE, multi-scale Sato dark-ridge filter, in the region,
  Otsu threshold of the HR vesselness reused for every output of the image, small
  components removed). `vessel_dice` / `vessel_cldice` (Shit et al. CVPR 2021): output vessels vs HR
  vessels. `manual_dice` / `manual_cldice`: vs the manual (or, for phantoms, exact) vessel mask, only
  where the source has one; the `hr` row is the segmenter on the HR image itself (the ceiling).
- **thinnest_calibre**: mean calibre (HR px) of the thinnest 1-px calibre bin whose true-vessel pixels
  are recalled >= 50 % by the segmentation (phantoms with calibre maps only; n/a elsewhere; "none" =
  no bin recovered, written as null in metrics.json). Median over the images that have a calibre map.
- **checkerboard**: spectral energy of the output's luminance at the upsampling periods (2 .. zoom px)
  relative to the HR image (1 = like HR, > 1 = periodic artifacts or noise added, < 1 = smoother than
  HR there); the value closest to 1 is bold.
- **ms / fps**: median wall time per image (batch 1, fp32, after 2 warm-up runs, model forward only with
  the input already on the device) and its inverse, on the device named in the table.
- Values are means over the test images (NaN-aware; thinnest_calibre: median); metrics.json writes
  non-finite values as null. No best pre-processing step is named at a zoom where the best vessel
  clDice is below 0.1.
"""

_FIXED_ORDER = ("input", "nearest", "bicubic", "lanczos", "opencv_espcn", "opencv_fsrcnn", "opencv_lapsrn",
                *phases.MAIN_LINE)


def model_order(names) -> list[str]:
    """Baselines first, then the phases, then modification variants (alphabetical), ``hr`` last."""
    names = list(dict.fromkeys(names))
    fixed = [n for n in _FIXED_ORDER if n in names]
    rest = sorted(n for n in names if n not in _FIXED_ORDER and n != "hr")
    return fixed + rest + (["hr"] if "hr" in names else [])


def aggregate(result: EvaluationResult) -> pd.DataFrame:
    """One row per model and zoom: NaN-aware means of :data:`IMAGE_METRICS`, speed and image count."""
    rows = result.rows
    if rows.empty:
        raise ValueError("the evaluation produced no rows (no test image?)")
    vals = rows[list(IMAGE_METRICS)].apply(pd.to_numeric)
    # PSNR of an exact copy is +inf: left out of the mean; thinnest_calibre +inf (nothing recovered) stays
    other = [c for c in IMAGE_METRICS if c != "thinnest_calibre"]
    vals[other] = vals[other].replace([np.inf, -np.inf], np.nan)
    grouped = pd.concat([rows[["model", "zoom"]], vals], axis=1).groupby(["model", "zoom"], sort=False)
    agg = grouped.mean()
    # thinnest calibre: median over images, so one image with nothing recovered (+inf) does not hide the rest
    agg["thinnest_calibre"] = grouped["thinnest_calibre"].median()
    agg = agg.join(grouped.size().rename("n_images"))
    agg = agg.reset_index()
    if not result.speed.empty:
        agg = agg.merge(result.speed[["model", "zoom", *SPEED_METRICS, "device"]], on=["model", "zoom"], how="left")
    else:
        for k in (*SPEED_METRICS, "device"):
            agg[k] = np.nan
    order = {n: i for i, n in enumerate(model_order(agg["model"]))}
    agg = agg.sort_values(["zoom", "model"], key=lambda c: c.map(order) if c.name == "model" else c)
    return agg.reset_index(drop=True)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def metrics_dict(agg: pd.DataFrame) -> dict:
    """``{model: {"x2": {"psnr_y": ..., ..., "fps": ...}}}`` (non-finite -> None)."""
    out: dict = {}
    for r in agg.to_dict("records"):
        d = out.setdefault(str(r["model"]), {}).setdefault(f"x{int(r['zoom'])}", {})
        for k in (*IMAGE_METRICS, *SPEED_METRICS):
            d[k] = _num(r.get(k))
    return out


#: the metrics of ``metrics.json`` (``dvc metrics show``): per model and zoom, PSNR-Y and vessel Dice, and
#: per candidate the paired PSNR-Y gain over the reference of the zoom (bicubic; the input at x1) with its
#: 95 % bootstrap interval. Every metric per model and zoom: ``plots/by_zoom.csv``, summary.md, MLflow.
HEADLINE = ("psnr_y", "vessel_dice")


def headline_metrics(agg: pd.DataFrame, cmp: pd.DataFrame, models: list[str]) -> dict:
    """``{model: {"x2": {"psnr_y", "vessel_dice", "dpsnr_y", "dpsnr_y_ci_low", "dpsnr_y_ci_high"}}}`` for
    the trained ``models`` and the references they are compared with (non-finite -> None)."""
    refs = set(cmp["reference"]) if len(cmp) else set()
    keep = [m for m in model_order(agg["model"]) if m in set(models) | refs]
    gain = {} if cmp.empty else {(r["model"], int(r["zoom"])): r
                                 for r in cmp[cmp["metric"] == "psnr_y"].to_dict("records")}
    out: dict = {}
    for r in agg[agg["model"].isin(keep)].to_dict("records"):
        z = int(r["zoom"])
        d = out.setdefault(str(r["model"]), {})[f"x{z}"] = {k: _num(r.get(k)) for k in HEADLINE}
        g = gain.get((r["model"], z))
        if g is not None:
            d.update({"dpsnr_y": _num(g["diff"]), "dpsnr_y_ci_low": _num(g["ci_low"]),
                      "dpsnr_y_ci_high": _num(g["ci_high"])})
    return {m: out[m] for m in keep if m in out}


def write_metrics_json(agg: pd.DataFrame, path: str | Path, cmp: pd.DataFrame, models: list[str]) -> Path:
    """:func:`headline_metrics` as ``path``, the evaluate stage's DVC metrics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(headline_metrics(agg, cmp, models), indent=2, allow_nan=False) + "\n")
    return path


def write_results_csv(result: EvaluationResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.rows.to_csv(path, index=False, float_format="%.6g")
    return path


def write_plot_csvs(agg: pd.DataFrame, plots_dir: str | Path) -> dict[str, Path]:
    """The data of ``dvc plots`` (templates in ``.dvc/plots/``), with no empty cell (an empty cell is drawn
    as 0): ``quality_speed.csv`` (model, zoom, fps, ms, vessel_dice, psnr_y; rows with a speed and both
    qualities) and ``by_zoom.csv`` (model, zoom and the study's two criteria,
    :data:`~retina_sr.evaluation.compare.COMPARED_METRICS`, where both are finite; every metric by zoom:
    ``figures/by_zoom.png``). ``zoom`` is written ``x2`` (a category: the marker shape); ``hr`` is left
    out; ``colour`` is the model's colour in every figure (:func:`~retina_sr.evaluation.figures.model_colour`)."""
    from .figures import model_colour  # figures imports this module

    d = Path(plots_dir)
    d.mkdir(parents=True, exist_ok=True)
    a = agg[agg["model"] != "hr"].copy()
    a["zoom"] = "x" + a["zoom"].astype(int).astype(str)
    a["colour"] = a["model"].map(model_colour)
    qs = d / "quality_speed.csv"
    cols = ["model", "zoom", "fps", "ms", "vessel_dice", "psnr_y", "colour"]
    sp = a[cols].replace([np.inf, -np.inf], np.nan).dropna()
    sp.to_csv(qs, index=False, float_format="%.6g")
    bz = d / "by_zoom.csv"
    a[["model", "zoom", "colour", *COMPARED_METRICS]].replace([np.inf, -np.inf], np.nan).dropna().to_csv(
        bz, index=False, float_format="%.6g")
    return {"quality_speed": qs, "by_zoom": bz}


def _fmt(v: float, metric: str) -> str:
    if metric == "thinnest_calibre" and v is not None and v == math.inf:
        return "none"
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if metric.startswith("psnr"):
        return f"{v:.2f}"
    if metric in ("ms", "fps"):
        return f"{v:.3g}" if v < 1000 else f"{v:.0f}"
    if metric == "thinnest_calibre":
        return f"{v:.1f}"
    return f"{v:.3f}" if metric != "checkerboard" else f"{v:.3g}"


def _best(values: pd.Series, metric: str) -> set[int]:
    v = pd.to_numeric(values, errors="coerce").replace([np.inf, -np.inf], np.nan)
    if metric in IDEAL_VALUE:
        v = -(v - IDEAL_VALUE[metric]).abs()  # closest to the ideal wins
    elif not HIGHER_IS_BETTER.get(metric, True):
        v = -v
    n = int(v.notna().sum())
    if n == 0:
        return set()
    best = v.max()
    won = {i for i, x in v.items() if pd.notna(x) and np.isclose(x, best, rtol=1e-9, atol=1e-12)}
    return set() if n > 1 and len(won) == n else won  # a tie of every candidate: no winner to highlight


def summary_markdown(result: EvaluationResult, agg: pd.DataFrame, cmp: pd.DataFrame | None = None) -> str:
    """The study's summary: test set, conventions, then per zoom a table (best in bold, ``hr`` excluded)."""
    t = result.test_description
    src = ", ".join(f"{k} ({v})" for k, v in t["sources"].items())
    lines = [
        "# Evaluation summary",
        "",
        "## Test set",
        "",
        f"- **{t['count']} held-out test images** ({src}), {t['size']} px after preprocessing; "
        f"{t['with_vessel_masks']} with manual/exact vessel masks.",
        f"- Degradation: {t['degradation']}.",
        f"- Zooms: {', '.join('x' + str(z) for z in t['zooms'])}. Models: "
        + (", ".join(f"`{e.name}` ({e.path})" for e in result.models) or "none found (baselines only)") + ".",
        f"- Model speed measured on: {result.device}; baselines on CPU (OpenCV).",
        "- Peers (OpenCV dnn_superres, natural-image weights): "
        + (", ".join(f"`{p}`" for p in t.get("peers", [])) or "none")
        + "".join(f"; {n}" for n in t.get("peer_notes", [])) + ".",
        "",
        *_initialisation(result),
        "## Conventions",
        "",
        CONVENTIONS,
    ]
    cols = [c for c in (*IMAGE_METRICS, *SPEED_METRICS) if c in agg.columns]
    for z in sorted(agg["zoom"].unique()):
        sub = agg[agg["zoom"] == z].reset_index(drop=True)
        shown = [c for c in cols if sub[c].notna().any()]
        cand = sub[sub["model"] != "hr"]
        bold = {c: _best(cand[c], c) for c in shown}
        lines += [f"## Zoom x{int(z)}", "", "| model | " + " | ".join(shown) + " |",
                  "|---|" + "---:|" * len(shown)]
        for i, r in sub.iterrows():
            name = f"{r['model']} (reference)" if r["model"] == "hr" else str(r["model"])
            cells = []
            for c in shown:
                s = _fmt(r[c], c)
                cells.append(f"**{s}**" if i in bold[c] and s != "n/a" else s)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    cmp = compare_to_reference(result.rows) if cmp is None else cmp
    lines += comparison_markdown(cmp, model_order(agg["model"]))
    lines += _verdict(agg)
    return "\n".join(lines) + "\n"


def _initialisation(result: EvaluationResult) -> list[str]:
    """How each model was initialised and how many steps it trained (from its checkpoint's meta)."""
    lines = []
    for e in result.models:
        m = e.meta or {}
        init = m.get("init_from")
        if init:
            start = (f"from `{init.get('path')}` ({init.get('loaded')} tensors inherited, {init.get('skipped')} "
                     "at initialisation)")
        else:
            start = "from initialisation" if m.get("phase") else "unknown (no training metadata)"
        pre = m.get("pretrain_steps") or 0
        over = m.get("loss_overrides") or {}
        own = ", ".join(f"{k} {v:g}" for k, v in sorted(over.items()))
        losses = f"its lr and schedule, `l1`'s losses with this variant's {own}" if own else "its lr, schedule and losses"
        budget = f"{m.get('steps', 'n/a')} steps" + (f" ({pre} catch-up steps first, as `l1` trains: {losses})" if pre else "")
        if own and not pre:
            budget += f" (this variant's loss weights: {own})"
        lines.append(f"- `{e.name}`: {start}; {budget}; best validation step {m.get('step', 'n/a')}.")
    return ["## Models and their initialisation", "", *lines, ""] if lines else []


# Below this centreline Dice vs the HR vessels, the output keeps too little of the vessel tree for a
# downstream vessel analysis to use; no "best pre-processing step" is named then.
USABLE_CLDICE = 0.1


def _verdict(agg: pd.DataFrame) -> list[str]:
    """Which candidate preserves the vessels best per zoom (the study's main criterion), and its speed."""
    out = ["## Best pre-processing step per zoom (vessel clDice vs HR, then speed)", ""]
    for z in sorted(agg["zoom"].unique()):
        sub = agg[(agg["zoom"] == z) & (agg["model"] != "hr") & agg["vessel_cldice"].notna()]
        if sub.empty:
            continue
        b = sub.sort_values(["vessel_cldice", "vessel_dice", "fps"], ascending=False, na_position="last").iloc[0]
        if b["vessel_cldice"] < USABLE_CLDICE:
            out.append(f"- x{int(z)}: none - no candidate keeps a usable vessel tree at this zoom (best vessel "
                       f"clDice {b['vessel_cldice']:.3f} by {b['model']}, below {USABLE_CLDICE})")
            continue
        speed = f", {b['fps']:.1f} FPS ({b['ms']:.3g} ms/image)" if pd.notna(b.get("fps")) else ""
        out.append(f"- x{int(z)}: **{b['model']}** (vessel clDice {b['vessel_cldice']:.3f}, Dice "
                   f"{b['vessel_dice']:.3f}, PSNR-Y {b['psnr_y']:.2f} dB{speed})")
    out.append("")
    return out


def write_reports(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``results.csv``, ``summary.md`` and ``plots/*.csv`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(result)
    cmp = compare_to_reference(result.rows)  # 10 000 bootstrap resamples per row: computed once
    files = {
        "metrics": write_metrics_json(agg, out / "metrics.json", cmp, [e.name for e in result.models]),
        "results": write_results_csv(result, out / "results.csv"),
    }
    files.update(write_plot_csvs(agg, out / "plots"))
    cmp_csv = out / "comparison.csv"
    cmp.to_csv(cmp_csv, index=False, float_format="%.6g")
    files["comparison"] = cmp_csv
    s = out / "summary.md"
    s.write_text(summary_markdown(result, agg, cmp))
    files["summary"] = s
    return files
