"""Paired comparison of every candidate with the baseline a user already has, over the test images.

For zoom ``s > 1`` the reference is bicubic (what every microscope does); for zoom 1 (deblur/denoise)
it is the degraded input itself. Per candidate, zoom and metric the per-image differences
``candidate - reference`` give

- the mean difference and its 95 % percentile-bootstrap interval (Efron & Tibshirani 1993; images
  resampled with replacement, 10 000 resamples, fixed seed, so the report is reproducible),
- the wins: images on which the candidate is strictly better,
- a verdict in words: ``better`` (interval above 0), ``worse`` (interval below 0) or
  ``not distinguishable`` (interval contains 0, or fewer than 3 images).

With a handful of test images an interval is wide: the verdict says so rather than calling noise a gain.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["COMPARED_METRICS", "reference_for", "bootstrap_ci", "verdict", "compare_to_reference", "comparison_markdown"]

#: the two criteria of the study: fidelity and vessel preservation (both higher is better)
COMPARED_METRICS = ("psnr_y", "vessel_dice")


def reference_for(zoom: int) -> str:
    """The baseline a candidate must beat at ``zoom``."""
    return "input" if int(zoom) == 1 else "bicubic"


def bootstrap_ci(diff: np.ndarray, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``diff`` (NaNs dropped); (nan, nan) when empty."""
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def verdict(lo: float, hi: float, n: int) -> str:
    if n < 3 or not (np.isfinite(lo) and np.isfinite(hi)):
        return "not distinguishable"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "not distinguishable"


def compare_to_reference(rows: pd.DataFrame, metrics=COMPARED_METRICS, n_boot: int = 10_000) -> pd.DataFrame:
    """One row per (zoom, candidate, metric) from the per-image ``rows`` of an evaluation.

    ``rows`` needs the columns ``image_id, zoom, model`` and the metrics. Candidates are every model
    but the reference itself and ``hr``. Columns: ``zoom, model, reference, metric, n, mean,
    reference_mean, diff, ci_low, ci_high, wins, verdict``.
    """
    out = []
    for zoom, zrows in rows.groupby("zoom", sort=True):
        ref = reference_for(int(zoom))
        base = zrows[zrows["model"] == ref].set_index("image_id")
        if base.empty:
            continue
        for model, m in zrows.groupby("model", sort=False):
            if model in (ref, "hr"):
                continue
            m = m.set_index("image_id")
            common = m.index.intersection(base.index)
            for metric in metrics:
                if metric not in m.columns:
                    continue
                a = pd.to_numeric(m.loc[common, metric], errors="coerce").to_numpy(np.float64)
                b = pd.to_numeric(base.loc[common, metric], errors="coerce").to_numpy(np.float64)
                ok = np.isfinite(a) & np.isfinite(b)
                d = a[ok] - b[ok]
                lo, hi = bootstrap_ci(d, n_boot)
                out.append({
                    "zoom": int(zoom), "model": model, "reference": ref, "metric": metric, "n": int(d.size),
                    "mean": float(a[ok].mean()) if d.size else np.nan,
                    "reference_mean": float(b[ok].mean()) if d.size else np.nan,
                    "diff": float(d.mean()) if d.size else np.nan, "ci_low": lo, "ci_high": hi,
                    "wins": int((d > 0).sum()), "verdict": verdict(lo, hi, int(d.size)),
                })
    return pd.DataFrame(out, columns=["zoom", "model", "reference", "metric", "n", "mean", "reference_mean", "diff",
                                      "ci_low", "ci_high", "wins", "verdict"])


def comparison_markdown(cmp: pd.DataFrame, order=None) -> list[str]:
    """Markdown section: per zoom, each candidate's difference to the reference with interval, wins, verdict."""
    if cmp.empty:
        return []
    lines = ["## Against the baseline a user already has (per-image paired differences)", "",
             "Difference = candidate - reference on the same test image (zoom 1: the degraded input; zoom > 1: "
             "bicubic); mean with its 95 % bootstrap interval, wins = images where the candidate is better.", ""]
    rank = {n: i for i, n in enumerate(order or [])}
    for zoom, z in cmp.groupby("zoom", sort=True):
        ref = z["reference"].iloc[0]
        lines += [f"### x{zoom} vs {ref}", "", "| model | dPSNR-Y dB [95 % CI] | wins | verdict | dVessel Dice [95 % CI] | wins | verdict |",
                  "|---|---:|---:|---|---:|---:|---|"]
        models = sorted(z["model"].unique(), key=lambda n: (rank.get(n, len(rank)), n))
        for name in models:
            cells = []
            for metric, fmt in (("psnr_y", "+.2f"), ("vessel_dice", "+.3f")):
                r = z[(z["model"] == name) & (z["metric"] == metric)]
                if r.empty:
                    cells += ["n/a", "", ""]
                    continue
                r = r.iloc[0]
                cells += [f"{r['diff']:{fmt}} [{r['ci_low']:{fmt}}, {r['ci_high']:{fmt}}]", f"{r['wins']}/{r['n']}",
                          f"**{r['verdict']}**" if r["verdict"] != "not distinguishable" else r["verdict"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
