"""``retina-sr zoom`` on an image, a folder and a video; ``export-onnx``; ``bench``; clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from retina_sr.cli import main
from retina_sr.config import ModelConfig
from retina_sr.data.io import read_image, write_image
from retina_sr.inference.video import VideoReadError, enhance_video, probe_video
from retina_sr.models import build_model
from retina_sr.models.checkpoint import save_model


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    path = tmp_path / "models" / "l1" / "model.pt"
    save_model(path, build_model(cfg, levels=3), {"model": cfg.model_dump(), "levels": 3,
                                                  "scales": [1, 2, 4, 8], "phase": "l1"})
    return path


def _rgb(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _video(path, frames=10, size=(64, 48), fps=10.0):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert vw.isOpened()
    for i in range(frames):
        vw.write(_rgb(size[1], size[0], seed=i))
    vw.release()
    return path


def test_zoom_image(tmp_path, ckpt, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(30, 40))
    out = tmp_path / "out" / "eye_x3.png"
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert read_image(out).shape == (90, 120, 3)
    # ROI, tiling and the default output name
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "2", "--roi", "4,6,20,10", "--tile", "16",
                 "--overlap", "8"]) == 0
    assert read_image(tmp_path / "eye_x2.png").shape == (20, 40, 3)
    assert "eye_x2.png" in capsys.readouterr().out


def test_zoom_image_onnx(tmp_path, ckpt):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(30, 40))
    out = tmp_path / "eye_onnx.png"
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "4", "--onnx", "--out", str(out)]) == 0
    ref = tmp_path / "eye_torch.png"
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "4", "--out", str(ref), "--device", "cpu"]) == 0
    assert np.abs(read_image(out).astype(int) - read_image(ref).astype(int)).max() <= 1


def test_zoom_folder_mirrors_names(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    write_image(src / "a.png", _rgb(20, 24, 1))
    write_image(src / "sub" / "b.jpg", _rgb(16, 20, 2))
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "zoomed"
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert read_image(out / "a.png").shape == (40, 48, 3)
    assert read_image(out / "sub" / "b.jpg").shape == (32, 40, 3)
    # an unreadable image is reported by name and makes the exit code non-zero; the others still run
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "2", "--out", str(out)]) == 1
    assert "broken.png" in capsys.readouterr().err


def test_zoom_video(tmp_path, ckpt, capsys):
    src = _video(tmp_path / "clip.mp4")
    out = tmp_path / "clip_x2.mp4"
    report = tmp_path / "report.json"
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "2", "--out", str(out), "--device", "cpu",
                 "--report", str(report), "--quiet"]) == 0
    fps, count, w, h = probe_video(out)
    assert (w, h) == (128, 96) and count == 10
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 10
    rep = json.loads(report.read_text())
    assert rep["frames"] == 10 and rep["input_fps"] == pytest.approx(10.0) and rep["achieved_fps"] > 0
    assert isinstance(rep["realtime"], bool)
    assert "FPS achieved" in capsys.readouterr().out


def test_video_api_with_roi(tmp_path, ckpt):
    from retina_sr.inference import Enhancer

    enh = Enhancer.from_checkpoint(ckpt, device="cpu")
    src = _video(tmp_path / "clip.avi", frames=4)
    rep = enhance_video(enh, src, tmp_path / "o.mp4", zoom=1.5, roi=(8, 8, 32, 24), progress=False, queue_size=1)
    assert rep.frames == 4 and rep.out_size == (48, 36) and rep.realtime == (rep.achieved_fps >= rep.input_fps)


def test_unreadable_video(tmp_path, ckpt, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 2048)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        probe_video(bad)
    assert main(["zoom", str(bad), "--model", str(ckpt), "--zoom", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and ("cannot open" in err or "no decodable frame" in err)


def test_cli_errors(tmp_path, ckpt, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(16, 16))
    assert main(["zoom", str(src), "--model", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"nope")
    assert main(["zoom", str(src), "--model", str(corrupt)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "16", "--device", "cpu"]) == 2
    assert "maximum zoom 8" in capsys.readouterr().err
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "0.5", "--device", "cpu"]) == 2
    assert "below 1" in capsys.readouterr().err
    assert main(["zoom", str(src), "--model", str(ckpt), "--roi", "1,2,3"]) == 2
    assert "--roi" in capsys.readouterr().err
    assert main(["zoom", str(tmp_path / "nothing.png"), "--model", str(ckpt)]) == 2


def test_export_onnx_cli(tmp_path, ckpt, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", "--model", str(ckpt), "--zoom", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "exporter" in text and "max abs diff" in text
    assert main(["zoom", str(tmp_path / "x.png"), "--model", str(out)]) == 2  # missing input, clear error


def test_bench_cli(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # finds models/l1/model.pt
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "64x48", "--zooms", "2,8", "--repeats", "2", "--device", "cpu",
                 "--json", str(out), "--threads", "1"]) == 0
    res = json.loads(out.read_text())
    methods = {(r["method"], r["backend"].split()[0], r["zoom"]) for r in res["rows"]}
    assert ("bicubic", "opencv", 2.0) in methods and ("espcn", "cpu", 8.0) in methods
    assert ("lapsrn", "cpu", 2.0) in methods and ("lapsrn", "onnxruntime", 8.0) in methods
    for r in res["rows"]:
        assert r["median_ms"] > 0 and r["p95_ms"] >= r["median_ms"] and r["fps"] > 0
        assert tuple(r["out_size"]) == (64, 48)
    assert "| method |" in capsys.readouterr().out


def test_video_error_midstream_stops_pipeline(tmp_path, ckpt):
    """An enhancement error (here an ROI outside the frame) ends all three stages and is raised."""
    import threading

    from retina_sr.inference import Enhancer, InputError

    enh = Enhancer.from_checkpoint(ckpt, device="cpu")
    src = _video(tmp_path / "clip.mp4", frames=30)
    with pytest.raises(InputError, match="not inside"):
        enhance_video(enh, src, tmp_path / "o.mp4", zoom=2, roi=(50, 40, 32, 24), progress=False, queue_size=2)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("video-")]
    assert not alive, alive  # decode and encode threads have ended


def test_video_writer_failure_with_slow_decoder_does_not_hang(tmp_path, monkeypatch):
    """The encoder fails (output path is a folder) while the main thread waits for a slow decoder: the
    reader stops without queueing its end marker, so a blocking get() used to wait forever."""
    import threading
    import time

    from retina_sr.inference.enhancer import BaseEnhancer

    class Nearest(BaseEnhancer):  # fast enhancement: the main thread is always waiting on the decoder
        max_zoom = 8

        def _forward(self, x, n_up):
            return torch.nn.functional.interpolate(x, scale_factor=2**n_up, mode="nearest")

    class SlowCapture:
        def __init__(self, path):
            self.n = 0

        def isOpened(self):
            return True

        def read(self):
            time.sleep(0.15)
            self.n += 1
            return (True, np.zeros((16, 16, 3), np.uint8)) if self.n <= 10 else (False, None)

        def get(self, prop):
            return 10.0 if prop == cv2.CAP_PROP_FPS else 10

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", SlowCapture)
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"stub")
    dst = tmp_path / "out.mp4"
    dst.mkdir()  # a folder: the video writer cannot open it
    res: dict = {}

    def go():
        try:
            res["report"] = enhance_video(Nearest(), src, dst, zoom=2, progress=False, queue_size=2)
        except BaseException as err:  # noqa: BLE001
            res["error"] = err

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "enhance_video hangs after an encoder error"
    assert isinstance(res.get("error"), OSError) and "video writer" in str(res["error"])


def test_bench_cuda_fast_path_warms_up_past_cuda_graph_capture(monkeypatch):
    """torch.compile(mode='reduce-overhead') records its CUDA graph on the 2nd call: the timed calls of
    the CUDA fast path start after it (checked with stand-ins: no GPU needed)."""
    import retina_sr.inference.bench as bench
    import retina_sr.inference.enhancer as enhancer_mod
    import retina_sr.runtime as runtime

    class FakeEnhancer:
        def __init__(self, model, meta, device="auto", fast=False, **kw):
            self.mode = "cuda bfloat16+compile" if fast else "cuda eager fp32"

        def enhance(self, frame, z):
            return frame

    calls = []
    monkeypatch.setattr(enhancer_mod, "Enhancer", FakeEnhancer)
    monkeypatch.setattr(runtime, "pick_device", lambda d="auto": torch.device("cuda"))
    monkeypatch.setattr(runtime, "device_name", lambda d: "fake GPU")
    monkeypatch.setattr(bench, "time_call", lambda fn, repeats, warmup=1: calls.append(warmup) or [1e-3] * repeats)
    res = bench.run_bench([], [(32, 32)], [2.0], repeats=2, device="cuda", archs=[(4, 1)], baselines=False,
                          log=lambda s: None)
    assert [r["backend"] for r in res["rows"]] == ["cuda eager fp32", "cuda bfloat16+compile"]
    assert calls[0] >= 1 and calls[1] >= 3  # warm-up, graph capture, then the first replay
