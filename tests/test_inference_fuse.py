"""The exact phase form of the 2x upsamplers (the ONNX graph ONNX Runtime runs fastest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_variants import every_variant
from retina_sr.config import ModelConfig
from retina_sr.inference import ONNX_PARITY_ATOL, Enhancer, OnnxEnhancer, export_onnx
from retina_sr.inference.fuse import PhaseBicubic, PhaseConvUp, PhaseLapSRN, phase_conv3x3
from retina_sr.models import build_model


def test_phase_bicubic_is_bicubic_interpolation():
    x = torch.rand(1, 3, 9, 13)
    ref = F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)
    assert torch.allclose(PhaseBicubic(3)(x), ref, atol=1e-6)


def test_phase_deconv_is_the_transposed_conv():
    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose2d(5, 6, 4, stride=2, padding=1)
    x = torch.randn(1, 5, 7, 8)
    assert torch.allclose(PhaseConvUp.from_deconv(deconv, torch.nn.Identity())(x), deconv(x), atol=1e-5)
    with pytest.raises(ValueError, match="4x4 stride-2"):
        PhaseConvUp.from_deconv(torch.nn.ConvTranspose2d(2, 2, 3, stride=2), torch.nn.Identity())


def test_fine_grid_conv_on_phase_channels():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)
    z = torch.randn(1, 16, 6, 7)  # the four phases of 4 channels
    assert torch.allclose(F.pixel_shuffle(phase_conv3x3(conv)(z), 2), conv(F.pixel_shuffle(z, 2)), atol=1e-5)


def test_resize_conv_is_a_phase_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 6, 3, padding=1)
    x = torch.randn(2, 5, 7, 9)
    ref = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert torch.allclose(PhaseConvUp.from_resize_conv(conv, torch.nn.Identity())(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="3x3 padding-1"):
        PhaseConvUp.from_resize_conv(torch.nn.Conv2d(2, 2, 5, padding=2), torch.nn.Identity())


@every_variant
def test_phase_lapsrn_equals_the_model(kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(features=4, depth=2, **kw), levels=3).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.rand(1, 3, 11, 14)
    with torch.no_grad():
        for n_up in range(4):
            fused = PhaseLapSRN(model, n_up)
            no_phase_form = kw["upsample"] == "resize_conv" and kw.get("image_branch", "bicubic") == "learned"
            assert (fused.top_res is not None) == (n_up > 0 and not no_phase_form)
            assert (fused(x) - model(x, n_up=n_up)[-1]).abs().max() < 1e-4


def test_export_writes_the_phase_graph_and_falls_back(tmp_path, monkeypatch):
    import retina_sr.inference.onnx as onnx_mod

    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    model, meta = build_model(cfg, levels=3), {"model": cfg.model_dump(), "levels": 3}
    info = export_onnx(model, tmp_path / "m.onnx", 4, meta=meta)
    assert info.graph == "phase" and info.parity_max_abs <= ONNX_PARITY_ATOL and info.receptive_radius > 0
    ort = OnnxEnhancer(info.path, threads=1)
    assert "phase graph" in ort.mode and ort.receptive_radius(2) == info.receptive_radius
    img = np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    ref = Enhancer(model, meta, device="cpu").enhance(img, 4).astype(int)
    assert np.abs(ort.enhance(img, 4).astype(int) - ref).max() <= 1

    class Broken(torch.nn.Module):
        def __init__(self, model, n_up):
            super().__init__()

        def forward(self, x):
            return x  # the wrong size: fails the parity check

    monkeypatch.setattr(onnx_mod, "PhaseLapSRN", Broken)
    info = export_onnx(model, tmp_path / "p.onnx", 4, meta=meta)
    assert info.graph == "plain" and info.graph_error and "differs" in info.graph_error
    assert export_onnx(model, tmp_path / "q.onnx", 2, meta=meta, fuse=False).graph == "plain"
