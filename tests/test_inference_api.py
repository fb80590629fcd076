"""Inference API: zoom factors, ROI / digital window, input kinds, clear errors, MLflow URIs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retina_sr.config import ModelConfig
from retina_sr.inference import Enhancer, InputError, ZoomError, levels_for_zoom
from retina_sr.models import build_model
from retina_sr.models.checkpoint import CheckpointError, save_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    path = tmp_path / "model.pt"
    save_model(path, build_model(cfg, levels=3), {"model": cfg.model_dump(), "levels": 3,
                                                  "scales": [1, 2, 4, 8], "phase": "l1"})
    return path


@pytest.fixture
def enh(ckpt):
    return Enhancer.from_checkpoint(ckpt, device="cpu")


def _image(h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("zoom,n_up", [(1, 0), (1.5, 1), (2, 1), (3, 2), (4, 2), (8, 3)])
def test_zoom_factors(enh, zoom, n_up):
    img = _image()
    out = enh.enhance(img, zoom)
    assert levels_for_zoom(zoom) == n_up
    assert out.shape == (round(24 * zoom), round(32 * zoom), 3) and out.dtype == np.uint8
    # the result is the model's 2**n_up output, resampled (antialiased bicubic, on the model's device)
    # when zoom is not a power of 2
    with torch.inference_mode():
        ref = enh.model(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, n_up=n_up)[-1]
    if ref.shape[-2:] != out.shape[:2]:
        ref = torch.nn.functional.interpolate(ref, size=out.shape[:2], mode="bicubic", antialias=True)
    ref = ref.clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(np.float32) - ref * 255).max() <= 0.5 + 1e-3  # rounding only


def test_float_and_tensor_inputs(enh):
    img = _image().astype(np.float32) / 255
    out = enh.enhance(img, 2)
    assert out.dtype == np.float32 and out.shape == (48, 64, 3) and out.min() >= 0 and out.max() <= 1
    t = torch.from_numpy(img).permute(2, 0, 1)
    tout = enh.enhance(t, 2)
    assert isinstance(tout, torch.Tensor) and tout.shape == (3, 48, 64)
    assert torch.allclose(tout.permute(1, 2, 0), torch.from_numpy(out), atol=1e-6)
    assert enh.enhance(t[None], 2).shape == (1, 3, 48, 64)


def test_out_size(enh):
    out = enh.enhance(_image(), 3, out_size=(80, 60))
    assert out.shape == (60, 80, 3)
    with pytest.raises(InputError, match="out_size"):
        enh.enhance(_image(), 2, out_size=(200, 60))  # larger than the x2 output 64x48


def test_roi_matches_full_image_inside(enh):
    img = _image(64, 80)
    full = enh.enhance(img, 2).astype(np.int16)
    roi = (40, 20, 24, 16)  # far enough from the borders that the 32 px context covers the field of view
    part = enh.enhance(img, 2, roi=roi).astype(np.int16)
    assert part.shape == (32, 48, 3)
    x, y, w, h = roi
    assert np.abs(part - full[2 * y:2 * (y + h), 2 * x:2 * (x + w)]).max() <= 1
    with pytest.raises(InputError, match="not inside"):
        enh.enhance(img, 2, roi=(70, 0, 20, 10))


def test_window(enh):
    img = _image(64, 80)
    view = enh.window(img, center=(40, 32), zoom=4, display_size=(40, 24))
    assert view.shape == (24, 40, 3)
    # the same as enhancing the 10x6 source region centred on (40, 32)
    ref = enh.enhance(img, 4, roi=(35, 29, 10, 6))
    assert np.array_equal(view, ref)
    # near a corner the region is shifted inside the image; a region larger than the image is padded
    assert enh.window(img, center=(0, 0), zoom=2, display_size=(30, 20)).shape == (20, 30, 3)
    assert enh.window(img, center=(40, 32), zoom=1, display_size=(120, 90)).shape == (90, 120, 3)


def test_gray_and_rgba(enh):
    gray = _image()[:, :, 0]
    with pytest.warns(UserWarning, match="grayscale"):
        out = enh.enhance(gray, 2)
    assert out.shape == (48, 64) and out.dtype == np.uint8
    with pytest.warns(UserWarning, match="grayscale"):
        assert enh.enhance(gray[:, :, None], 2).shape == (48, 64, 1)
    rgba = np.dstack([_image(), np.full((24, 32), 255, np.uint8)])
    with pytest.warns(UserWarning, match="alpha"):
        out = enh.enhance(rgba, 2)
    assert out.shape == (48, 64, 3)
    with pytest.warns(UserWarning, match="alpha"):  # alpha is ignored, colour result unchanged
        pass_ = enh.enhance(rgba, 2)
    assert np.array_equal(pass_, enh.enhance(_image(), 2))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((8, 8, 2), np.uint8), "2 channels"),
    (np.zeros((8, 8, 3), np.int32), "dtype"),
    (np.full((8, 8, 3), 200.0, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
    (torch.zeros(4, 8, 8), "tensor input"),
])
def test_bad_inputs_rejected_clearly(enh, bad, match):
    with pytest.raises(InputError, match=match):
        enh.enhance(bad, 2)


@pytest.mark.parametrize("zoom", [0.5, 0.99, 9, 16])
def test_unsupported_zoom(enh, zoom):
    with pytest.raises(ZoomError, match="zoom"):
        enh.enhance(_image(), zoom)


def test_missing_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Enhancer.from_checkpoint(tmp_path / "nope.pt", device="cpu")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        Enhancer.from_checkpoint(bad, device="cpu")


def test_fast_on_cpu_warns_and_matches_eager(ckpt, enh):
    with pytest.warns(UserWarning, match="CUDA"):
        fast = Enhancer.from_checkpoint(ckpt, device="cpu", fast=True)
    assert fast.mode == "cpu eager fp32"
    img = _image()
    assert np.array_equal(fast.enhance(img, 4), enh.enhance(img, 4))


def test_bf16_autocast_tolerance(ckpt, enh):
    """The reduced-precision path (bf16 autocast, what the CUDA fast path uses) stays close to fp32.

    Held tolerance on the [0, 1] scale: max abs <= 0.05, mean abs <= 0.01 (bf16 has 8 mantissa bits).
    """
    low = Enhancer.from_checkpoint(ckpt, device="cpu", amp_dtype=torch.bfloat16)
    assert "bfloat16" in low.mode
    img = _image(32, 40).astype(np.float32) / 255
    a, b = enh.enhance(img, 4), low.enhance(img, 4)
    assert np.abs(a - b).max() <= 0.05 and np.abs(a - b).mean() <= 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU fast path cannot run here")
def test_cuda_fast_path_parity(ckpt):  # pragma: no cover - needs a GPU
    eager = Enhancer.from_checkpoint(ckpt, device="cuda")
    fast = Enhancer.from_checkpoint(ckpt, device="cuda", fast=True)
    img = _image(64, 96).astype(np.float32) / 255
    ref = eager.enhance(img, 4)
    for _ in range(3):  # compile, CUDA-graph capture, replay
        out = fast.enhance(img, 4)
    assert np.abs(out - ref).max() <= 0.05 and np.abs(out - ref).mean() <= 0.01


def test_mlflow_runs_uri(ckpt, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("inference-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifact(str(ckpt), artifact_path="checkpoint")
    enh = Enhancer.from_checkpoint(f"runs:/{run.info.run_id}/checkpoint/model.pt", device="cpu", tracking_uri=uri)
    assert enh.max_zoom == 8 and enh.enhance(_image(), 2).shape == (48, 64, 3)
    enh2 = Enhancer.from_checkpoint(f"runs:/{run.info.run_id}/checkpoint", device="cpu", tracking_uri=uri)
    assert enh2.max_zoom == 8
    with pytest.raises(CheckpointError, match="could not download"):
        Enhancer.from_checkpoint(f"runs:/{'0' * 32}/model.pt", device="cpu", tracking_uri=uri)


@pytest.mark.slow
def test_compiled_channels_last_bf16_path_on_cpu(ckpt, enh):
    """The fast path's code (torch.compile of the level wrapper, channels_last, bf16 autocast, output
    copy-out) run on CPU with inductor; on CUDA the same code adds CUDA graphs (reduce-overhead)."""
    fast = Enhancer.from_checkpoint(ckpt, device="cpu", compile=True, amp_dtype=torch.bfloat16, channels_last=True)
    assert "compile" in fast.mode and "channels_last" in fast.mode
    img = _image(32, 40).astype(np.float32) / 255
    ref = enh.enhance(img, 4)
    graphs = []
    for _ in range(2):
        out = fast.enhance(img, 4)
        assert np.abs(out - ref).max() <= 0.05 and np.abs(out - ref).mean() <= 0.01
        graphs.append(sum(s.compiles for s in fast.compile_stats.values()))
    assert graphs[0] >= 1 and graphs[1] == graphs[0]  # inductor compiled once, no recompilation


def test_big_endian_uint16_input(enh):
    """16-bit TIFFs read by e.g. tifffile can be big-endian ('>u2'): the same values, the same result."""
    img16 = (_image().astype(np.uint16) * 257)
    be = img16.astype(">u2")
    assert not be.dtype.isnative
    out = enh.enhance(be, 2)
    assert out.dtype == np.uint16 and np.array_equal(out, enh.enhance(img16, 2))


def test_fast_upscaler_for_the_evaluation(ckpt, enh):
    """The hook the evaluation calls to score the fast path as its own row: CPU -> ONNX Runtime (phase
    graph); amp_dtype=bf16 -> the PyTorch model under bf16 autocast (the GPU path's arithmetic)."""
    from retina_sr.inference.fastpath import fast_upscaler

    img = _image(20, 28)
    ref = enh.enhance(img, 4).astype(int)
    up = fast_upscaler(enh.model, enh.meta, device="cpu")
    try:
        out = up(img, 4)
        assert out.dtype == np.uint8 and out.shape == (80, 112, 3) and "onnxruntime" in up.mode
        assert np.abs(out.astype(int) - ref).max() <= 1
        assert up(img, 2).shape == (40, 56, 3)  # another level: exported on first use
    finally:
        up.close()
    low = fast_upscaler(enh.model, enh.meta, device="cpu", amp_dtype=torch.bfloat16)
    assert "bfloat16" in low.mode and np.abs(low(img, 4).astype(int) - ref).max() <= 3
