"""Paired comparison with the baseline (bootstrap interval, wins, verdict) and the OpenCV peers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retina_sr.evaluation.baselines import load_peers, upsample
from retina_sr.evaluation.compare import bootstrap_ci, compare_to_reference, comparison_markdown, verdict

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers" / "opencv_dnn_superres"


def _rows(diffs: dict[str, list[float]], zoom: int = 2) -> pd.DataFrame:
    ref = "input" if zoom == 1 else "bicubic"
    base = np.linspace(30, 34, len(next(iter(diffs.values()))))
    rows = [{"image_id": f"im{i}", "zoom": zoom, "model": ref, "psnr_y": b, "vessel_dice": 0.5} for i, b in enumerate(base)]
    for name, d in diffs.items():
        rows += [{"image_id": f"im{i}", "zoom": zoom, "model": name, "psnr_y": b + x, "vessel_dice": 0.5 + x / 10}
                 for i, (b, x) in enumerate(zip(base, d))]
    rows += [{"image_id": f"im{i}", "zoom": zoom, "model": "hr", "psnr_y": np.inf, "vessel_dice": 1.0} for i in range(len(base))]
    return pd.DataFrame(rows)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 1.0, 8), rng.normal(1.0, 1.0, 200)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s)
    # the normal-theory interval of the large sample agrees with the bootstrap within 10 %
    half = 1.96 * large.std(ddof=1) / np.sqrt(large.size)
    assert abs((hi_l - lo_l) / 2 - half) < 0.1 * half
    assert np.isnan(bootstrap_ci(np.array([np.nan]))[0])


def test_verdicts_better_worse_and_indistinguishable():
    cmp = compare_to_reference(_rows({"good": [0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.55, 0.45],
                                      "bad": [-0.3, -0.2, -0.4, -0.3, -0.1, -0.2, -0.3, -0.25],
                                      "noise": [0.5, -0.5, 0.4, -0.4, 0.3, -0.3, 0.1, -0.1]}))
    psnr = cmp[cmp["metric"] == "psnr_y"].set_index("model")
    assert set(psnr.index) == {"good", "bad", "noise"}  # neither the reference nor hr is a candidate
    assert psnr.loc["good", "verdict"] == "better" and psnr.loc["good", "wins"] == 8
    assert psnr.loc["bad", "verdict"] == "worse" and psnr.loc["bad", "wins"] == 0
    assert psnr.loc["noise", "verdict"] == "not distinguishable" and psnr.loc["noise", "wins"] == 4
    assert psnr.loc["good", "diff"] == pytest.approx(np.mean([0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.55, 0.45]))
    assert verdict(0.1, 0.5, 2) == "not distinguishable"  # two images never make a verdict
    md = "\n".join(comparison_markdown(cmp))
    assert "x2 vs bicubic" in md and "**better**" in md and "**worse**" in md


def test_zoom_one_is_compared_with_the_degraded_input():
    cmp = compare_to_reference(_rows({"m": [1.0, 1.1, 0.9]}, zoom=1))
    assert set(cmp["reference"]) == {"input"}


def test_peers_absent_folder_is_skipped_with_the_reason(tmp_path):
    found, notes = load_peers(tmp_path / "nope", [1, 2, 4])
    assert not found and "not found" in notes[0] and "evaluate.peers_dir" in notes[0]
    assert load_peers(None, [2]) == ({}, [])


def test_opencv_peers_upsample_a_fundus_crop_close_to_bicubic():
    if not PEERS.is_dir():
        pytest.skip(f"{PEERS} is absent (peer .pb files are only beside the dev checkout)")
    from skimage import data

    hr = data.retina()[300:364, 300:364].copy()
    lr = upsample(hr, 1, "bicubic")[::2, ::2].copy()
    found, notes = load_peers(PEERS, [1, 2, 4])
    assert {(n, s) for n, s in found} >= {("opencv_espcn", 2), ("opencv_fsrcnn", 4), ("opencv_lapsrn", 2)}, notes
    out = found[("opencv_espcn", 2)](lr)
    bic = upsample(lr, 2, "bicubic")
    assert out.shape == bic.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - bic.astype(int)).mean() < 8  # an upsampling of the same image, not noise
