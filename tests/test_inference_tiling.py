"""Tiled inference: tile layout, feathering weights, equality with untiled output, no seams."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from retina_sr.config import ModelConfig
from retina_sr.inference import Enhancer, ramp_weights, run_tiled, tile_starts
from retina_sr.inference.tiling import _axis_plan
from retina_sr.models import build_model


@pytest.fixture(scope="module")
def enh():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(features=8, depth=2)
    meta = {"model": cfg.model_dump(), "levels": 2, "scales": [1, 2, 4], "phase": "l1"}
    return Enhancer(build_model(cfg, levels=2), meta, device="cpu")


def _smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def test_tile_starts_cover_with_overlap():
    for length, tile, ov in [(100, 40, 8), (97, 32, 16), (33, 32, 4), (32, 32, 4), (10, 32, 4), (500, 64, 0)]:
        starts = tile_starts(length, tile, ov)
        size = min(tile, length)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - ov for a, b in zip(starts, starts[1:]))  # every overlap >= ov
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 16, 16)


def test_ramps_sum_to_one_in_overlaps():
    for length, tile, ov in [(100, 40, 8), (97, 40, 12), (200, 48, 20), (131, 64, 32)]:
        total = torch.zeros(length)
        for s, size, w in _axis_plan(length, tile, ov, scale=1):
            total[s:s + size] += w
        assert torch.allclose(total, torch.ones(length), atol=1e-6)
    w = ramp_weights(20, 6, 0)
    assert torch.all(w[:1] == 0) and torch.all(w[5:] == 1) and torch.all(torch.diff(w[1:6]) > 0)


@pytest.mark.parametrize("zoom,tile,overlap", [(4, 40, 24), (2, 32, 24), (3, 36, 28)])
def test_tiled_equals_untiled(enh, zoom, tile, overlap):
    img = _smooth_image(56, 72)
    full = enh.enhance(img, zoom)
    tiled = enh.enhance(img, zoom, tile=tile, overlap=overlap)
    assert tiled.shape == full.shape
    diff = np.abs(tiled - full)
    assert diff.max() < 2e-3, diff.max()  # within a fraction of one 8-bit grey level (1/255 = 3.9e-3)


def _border_step_ratio(out: np.ndarray, borders: list[int], window: int = 8) -> float:
    """Largest ratio of the mean |horizontal gradient| across a tile-border column to the median of
    the same statistic over the ``window`` columns on either side (~1 without a seam)."""
    g = np.abs(np.diff(out, axis=1)).mean(axis=(0, 2))  # g[i]: step between columns i and i+1
    ratios = []
    for b in borders:
        i = b - 1
        near = np.r_[g[max(0, i - window):i], g[i + 1:i + 1 + window]]
        ratios.append(g[i] / np.median(near))
    return float(max(ratios))


def test_no_seam_at_tile_borders(enh):
    img = _smooth_image(48, 96, seed=1)
    scale, tile, overlap = 4, 32, 16
    starts = tile_starts(96, tile, overlap)
    borders = sorted({s * scale for s in starts[1:]} | {(s + tile) * scale for s in starts[:-1]})
    x = torch.from_numpy(img.transpose(2, 0, 1))[None]

    def fn(t):
        return enh._forward(t, 2)

    feathered = run_tiled(fn, x, scale, tile, overlap)[0].clamp(0, 1).numpy().transpose(1, 2, 0)
    full = fn(x)[0].clamp(0, 1).numpy().transpose(1, 2, 0)
    print("ratios", _border_step_ratio(feathered, borders), _border_step_ratio(full, borders))
    assert _border_step_ratio(feathered, borders) < 1.5
    # the same check catches a seam: hard-cut tiles without overlap show steps at their borders
    naive_starts = list(range(0, 96, tile))
    naive = np.concatenate([fn(x[:, :, :, s:s + tile])[0].clamp(0, 1).numpy().transpose(1, 2, 0)
                            for s in naive_starts], axis=1)
    naive_borders = [s * scale for s in naive_starts[1:]]
    assert _border_step_ratio(naive, naive_borders) > _border_step_ratio(full, naive_borders) + 0.3


def test_tiled_progress_and_roi(enh):
    img = _smooth_image(64, 64)
    calls = []
    out = enh.enhance(img, 2, roi=(8, 8, 48, 40), tile=32, overlap=24, progress=lambda d, t: calls.append((d, t)))
    assert out.shape == (80, 96, 3)
    assert calls and calls[-1][0] == calls[-1][1] > 1
    ref = enh.enhance(img, 2, roi=(8, 8, 48, 40))
    assert np.abs(out - ref).max() < 2e-3


def test_tiled_equals_untiled_with_the_overlap_from_the_receptive_field(enh):
    """Without --overlap the overlap is 4x the receptive-field radius the architecture gives."""
    from retina_sr.inference import receptive_radius, tile_overlap

    img = _smooth_image(80, 96, seed=2)
    ov = tile_overlap(receptive_radius(enh.model, 2))
    full = enh.enhance(img, 4)
    calls = []
    tiled = enh.enhance(img, 4, tile=ov + 16, progress=lambda d, t: calls.append(t))
    assert calls and calls[-1] > 1
    assert np.abs(tiled - full).max() < 2e-3


def test_automatic_tiling_above_the_memory_budget(enh, monkeypatch):
    from retina_sr.inference import base

    img = _smooth_image(64, 96, seed=3)
    full = enh.enhance(img, 4)
    used = []
    real = base.run_tiled
    monkeypatch.setattr(base, "run_tiled", lambda fn, x, s, tile, ov, progress: used.append((tile, ov)) or
                        real(fn, x, s, tile, ov, progress))
    small = Enhancer(enh.model, enh.meta, device="cpu", memory_budget=64 * 64 * 8 * 16 * 4 * 4)
    tiled = small.enhance(img, 4)  # 64x96 input: over the budget of a 64x64 input, so tiled
    assert used and used[0][0] % 16 == 0 and used[0][1] == 4 * small.receptive_radius(2)
    assert np.abs(tiled - full).max() < 2e-3
    used.clear()
    enh.enhance(img, 4)  # the default 2 GiB budget: no tiling for a small image
    assert not used


def test_default_budget_tiles_a_1024_image_at_x8():
    """F16 at x8 on 1024x1024 would allocate ~17 GB of activations untiled: the default budget tiles it."""
    from retina_sr.inference import auto_tile, tile_overlap
    from retina_sr.inference.base import DEFAULT_CPU_BUDGET
    from retina_sr.inference.tiling import activation_bytes

    assert 16e9 < activation_bytes(1024, 1024, 3, 16) < 18e9
    tile = auto_tile(1024, 1024, 3, 16, DEFAULT_CPU_BUDGET, overlap=tile_overlap(9))
    assert tile is not None and tile % 64 == 0 and activation_bytes(tile, tile, 3, 16) <= DEFAULT_CPU_BUDGET
    assert auto_tile(512, 512, 1, 16, DEFAULT_CPU_BUDGET, overlap=36) is None


def test_tile_below_the_default_overlap_is_a_clear_error(enh):
    from retina_sr.inference import InputError

    with pytest.raises(InputError, match="too small for this model's default overlap"):
        enh.enhance(_smooth_image(64, 64), 4, tile=8)
