"""ONNX export (dynamic height/width) and ONNX Runtime parity with eager fp32 PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retina_sr.config import ModelConfig
from retina_sr.inference import ONNX_PARITY_ATOL, Enhancer, OnnxEnhancer, ZoomError, export_onnx
from retina_sr.models import build_model
from retina_sr.models.checkpoint import CheckpointError, save_model


def _ckpt(path, **cfg_kw):
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1, **cfg_kw)
    save_model(path, build_model(cfg, levels=3), {"model": cfg.model_dump(), "levels": 3,
                                                  "scales": [1, 2, 4, 8], "phase": "l1"})
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("onnx")
    ckpt = _ckpt(d / "model.pt")
    info = export_onnx(ckpt, d / "model_x4.onnx", zoom=4)
    return ckpt, info


def _img(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_export_records_exporter_and_parity(exported):
    _, info = exported
    assert info.exporter in ("dynamo", "torchscript") and info.n_up == 2 and info.scale == 4
    assert info.parity_max_abs <= ONNX_PARITY_ATOL
    if info.exporter == "torchscript":
        assert info.dynamo_error  # the reason the dynamo exporter was not used is recorded
    enh = OnnxEnhancer(info.path, threads=1)
    assert enh.exporter == info.exporter and enh.max_zoom == 4 and enh.meta["levels"] == 3


@pytest.mark.parametrize("zoom", [4, 3])
def test_onnx_parity_dynamic_sizes(exported, zoom):
    ckpt, info = exported
    eager = Enhancer.from_checkpoint(ckpt, device="cpu")
    ort = OnnxEnhancer(info.path, threads=1)
    for h, w in [(24, 32), (37, 29)]:  # other sizes than the export's example input
        a, b = eager.enhance(_img(h, w), zoom), ort.enhance(_img(h, w), zoom)
        assert a.shape == b.shape == (round(h * zoom), round(w * zoom), 3)
        assert np.abs(a - b).max() < ONNX_PARITY_ATOL
    # ROI and window work the same through ONNX Runtime
    img = _img(40, 48)
    assert np.abs(eager.enhance(img, 4, roi=(4, 6, 20, 12)) - ort.enhance(img, 4, roi=(4, 6, 20, 12))).max() < 1e-4


def test_onnx_rejects_other_zoom_levels(exported):
    _, info = exported
    ort = OnnxEnhancer(info.path, threads=1)
    with pytest.raises(ZoomError, match=r"exported for zooms in \(2, 4\]"):
        ort.enhance(_img(8, 8), 2)
    with pytest.raises(ZoomError, match="maximum zoom 4"):
        ort.enhance(_img(8, 8), 8)


def test_torchscript_exporter(tmp_path):
    ckpt = _ckpt(tmp_path / "m.pt")
    info = export_onnx(ckpt, tmp_path / "m.onnx", zoom=1, prefer="torchscript")
    assert info.exporter == "torchscript" and info.n_up == 0
    eager = Enhancer.from_checkpoint(ckpt, device="cpu")
    ort = OnnxEnhancer(info.path, threads=1)
    img = _img(20, 28)
    assert np.abs(eager.enhance(img, 1) - ort.enhance(img, 1)).max() < ONNX_PARITY_ATOL


@pytest.mark.parametrize("upsample", ["subpixel", "resize_conv"])
def test_variant_upsamplers_export(tmp_path, upsample):
    ckpt = _ckpt(tmp_path / "m.pt", upsample=upsample)
    info = export_onnx(ckpt, tmp_path / "m.onnx", zoom=8)
    eager = Enhancer.from_checkpoint(ckpt, device="cpu")
    img = _img(18, 22)
    assert np.abs(eager.enhance(img, 8) - OnnxEnhancer(info.path, threads=1).enhance(img, 8)).max() < ONNX_PARITY_ATOL


def test_bad_onnx_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        OnnxEnhancer(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a loadable ONNX"):
        OnnxEnhancer(bad)
    with pytest.raises(ZoomError):
        export_onnx(_ckpt(tmp_path / "m.pt"), tmp_path / "m.onnx", zoom=16)


def test_falls_back_to_torchscript_when_dynamo_fails(tmp_path, monkeypatch):
    import retina_sr.inference.onnx as onnx_mod

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo exporter failure")

    monkeypatch.setattr(onnx_mod, "_export_dynamo", broken)
    info = export_onnx(_ckpt(tmp_path / "m.pt"), tmp_path / "m.onnx", zoom=2)
    assert info.exporter == "torchscript" and "simulated dynamo exporter failure" in info.dynamo_error
    ort = OnnxEnhancer(info.path, threads=1)
    assert ort.exporter == "torchscript" and ort.enhance(_img(10, 14), 2).shape == (20, 28, 3)
