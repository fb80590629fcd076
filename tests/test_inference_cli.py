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
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "2", "--out", str(out), "--overwrite"]) == 1
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


def test_video_api_refuses_its_input_as_output(tmp_path):
    from retina_sr.inference.enhancer import BaseEnhancer

    class Same(BaseEnhancer):  # zoom 1, identity
        def _forward(self, x, n_up):
            return x

    src = _video(tmp_path / "clip.mp4", frames=2)
    before = src.read_bytes()
    with pytest.raises(VideoReadError, match="is the input video"):
        enhance_video(Same(), src, tmp_path / "." / "clip.mp4", zoom=1, progress=False)
    assert src.read_bytes() == before


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


def test_video_writer_failure_with_slow_decoder_does_not_hang(tmp_path):
    """The encoder fails (output path is a folder) while the main thread waits for a slow decoder: the
    reader stops without queueing its end marker, so a blocking get() used to wait forever."""
    import threading
    import time

    from retina_sr.inference.enhancer import BaseEnhancer
    from retina_sr.inference.video_io import IterSource

    class Nearest(BaseEnhancer):  # fast enhancement: the main thread is always waiting on the decoder
        max_zoom = 8

        def _forward(self, x, n_up):
            return torch.nn.functional.interpolate(x, scale_factor=2**n_up, mode="nearest")

    def slow_frames():
        for _ in range(10):
            time.sleep(0.15)
            yield np.zeros((16, 16, 3), np.uint8)

    dst = tmp_path / "out.mp4"
    dst.mkdir()  # a folder: the video writer cannot open it
    res: dict = {}

    def go():
        try:
            res["report"] = enhance_video(Nearest(), IterSource(slow_frames(), fps=10), dst, zoom=2, progress=False,
                                          queue_size=2)
        except BaseException as err:  # noqa: BLE001
            res["error"] = err

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "enhance_video hangs after an encoder error"
    assert isinstance(res.get("error"), OSError) and "video writer" in str(res["error"])


class _FakeCudaEnhancer:
    """Stands in for the CUDA Enhancer (no GPU here): records warm-up, counts 'compiles'."""

    compile_on_timing = False
    compile_on_warmup = True
    log: list = []

    def __init__(self, model, meta, device="auto", fast=False, bucket=None, **kw):
        from retina_sr.inference.compiled import BucketStats

        self.fast, self.bucket = fast, (64 if fast else bucket)
        self.mode = "cuda bfloat16+compile(reduce-overhead)+bucket64" if fast else "cuda eager fp32"
        self.compile_stats = {(1, 64, 64): BucketStats()} if fast else {}
        self.warm = False

    def warmup(self, size, zooms, **kw):
        self.log.append(("warmup", self.fast, tuple(size), tuple(zooms)))
        self.warm = True
        if self.compile_on_warmup:
            self.compile_stats[(1, 64, 64)].compiles += 1

    def enhance(self, frame, z):
        self.log.append(("enhance", self.fast, self.warm))
        if self.fast and self.compile_on_timing:
            self.compile_stats[(1, 64, 64)].compiles += 1
        return np.repeat(np.repeat(frame, int(z), 0), int(z), 1)


@pytest.fixture
def fake_cuda_bench(monkeypatch):
    """run_bench on a pretend GPU: the fast path is warmed up explicitly before any timed call."""
    import retina_sr.inference.base as base
    import retina_sr.inference.bench as bench
    import retina_sr.inference.enhancer as enhancer_mod
    import retina_sr.runtime as runtime

    _FakeCudaEnhancer.log = []
    monkeypatch.setattr(enhancer_mod, "Enhancer", _FakeCudaEnhancer)
    monkeypatch.setattr(base, "resolve_device", lambda d="auto": torch.device("cuda"))
    monkeypatch.setattr(runtime, "device_name", lambda d: "fake GPU")

    def run(**kw):
        return bench.run_bench([], [(32, 32)], [2.0], repeats=2, device="cuda", archs=[("lapsrn", 4, 1)], baselines=False,
                               log=lambda s: None, **kw)
    return run


def test_bench_cli_times_an_lrhead_architecture_under_its_own_name(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "64x48", "--zooms", "4", "--repeats", "1", "--device", "cpu", "--no-baselines",
                 "--json", str(out), "--threads", "1", "--arch", "lrhead:F4D1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["method"], r["backend"].split()[0]) for r in rows} == {("lrhead", "cpu"), ("lrhead", "onnxruntime")}
    assert all(r["model"] == "LR head F4 D1 (random weights)" for r in rows)
    assert "phase graph" in next(r["backend"] for r in rows if r["backend"].startswith("onnxruntime"))


def test_bench_cuda_fast_path_is_warmed_up_and_counts_compiles(fake_cuda_bench, monkeypatch):
    res = fake_cuda_bench()
    eager, fast = res["rows"]
    assert eager["backend"] == "cuda eager fp32" and fast["backend"].startswith("cuda bfloat16+compile")
    assert fast["compiles"] == 1 and fast["recompiles"] == 0 and fast["max_abs_vs_fp32"] == 0
    log = _FakeCudaEnhancer.log
    warm = log.index(("warmup", True, (16, 16), (2.0,)))
    assert all(entry[2] for entry in log[warm + 1:] if entry[:2] == ("enhance", True))  # timed after warm-up
    assert "compiles" in bench_table(res)


def bench_table(res):
    from retina_sr.inference.bench import format_table

    return format_table(res)


def test_bench_fails_loudly_instead_of_mislabelling_an_uncompiled_run(fake_cuda_bench, monkeypatch):
    monkeypatch.setattr(_FakeCudaEnhancer, "compile_on_warmup", False)
    with pytest.raises(RuntimeError, match="compiled no graph"):
        fake_cuda_bench()
    monkeypatch.setattr(_FakeCudaEnhancer, "compile_on_warmup", True)
    monkeypatch.setattr(_FakeCudaEnhancer, "compile_on_timing", True)
    with pytest.raises(RuntimeError, match="during the timed calls"):
        fake_cuda_bench()


# ------------------------------------------------ issue #8: never lose or corrupt data; clear messages
def _zoom(*args: str) -> list[str]:
    return ["zoom", *map(str, args), "--device", "cpu"]


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("retina-sr zoom: error: "), err
    assert ".py" not in err and "Traceback" not in err, err
    return lines[0]


def test_zoom_refuses_to_write_over_its_input(tmp_path, ckpt, capsys, monkeypatch):
    """Output = input (same path, ./, symlink, hard link; folder or inside it; the video) is refused
    before the model is even loaded (a missing --model shows it), and the input is untouched."""
    import os

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "eye.png"
    write_image(src, _rgb(20, 24))
    os.symlink(src, tmp_path / "link.png")
    os.link(src, tmp_path / "hard.png")
    before = src.read_bytes()
    for out in (src, "./eye.png", tmp_path / "link.png", tmp_path / "hard.png"):
        assert main(_zoom(src, "--model", "no-such-model.pt", "--out", out, "--overwrite")) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert "is the input" in line and "no-such-model" not in line
    folder = tmp_path / "photos"
    write_image(folder / "a.png", _rgb(20, 24, 1))
    for out in (folder, f"{folder}/./", folder / "zoomed"):
        assert main(_zoom(folder, "--model", "no-such-model.pt", "--out", out, "--overwrite")) == 2
        assert "input folder" in _one_line_error(capsys.readouterr().err)
    video = _video(tmp_path / "clip.mp4", frames=2)
    assert main(_zoom(video, "--model", "no-such-model.pt", "--out", "clip.mp4", "--overwrite")) == 2
    assert "is the input" in _one_line_error(capsys.readouterr().err)
    assert src.read_bytes() == before and probe_video(video)[1] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_zoom_replaces_an_existing_output_only_with_overwrite(tmp_path, ckpt, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(20, 24))
    out = tmp_path / "eye_x2.png"
    out.write_bytes(b"precious")
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "eye_x2.png" in line and "--overwrite" in line and out.read_bytes() == b"precious"
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--overwrite")) == 0
    assert read_image(out).shape == (40, 48, 3)
    # folder: the outputs that exist are counted up front; nothing is written
    folder, dst = tmp_path / "in", tmp_path / "zoomed"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_image(folder / name, _rgb(12, 16, i))
    (dst / "b.png").parent.mkdir()
    (dst / "b.png").write_bytes(b"precious")
    assert main(_zoom(folder, "--model", ckpt, "--zoom", "2", "--out", dst)) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "1 of 3 output files already exist" in line and "b.png" in line and "--overwrite" in line
    assert sorted(p.name for p in dst.iterdir()) == ["b.png"] and (dst / "b.png").read_bytes() == b"precious"
    assert main(_zoom(folder, "--model", ckpt, "--zoom", "2", "--out", dst, "--overwrite")) == 0
    assert read_image(dst / "b.png").shape == (24, 32, 3)


def test_zoom_checks_out_before_inference(tmp_path, ckpt, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(20, 24))
    assert main(_zoom(src, "--model", "no-such-model.pt", "--out", tmp_path / "x.xyz")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "x.xyz" in line and ".png" in line and "no-such-model" not in line
    video = _video(tmp_path / "clip.mp4", frames=2)
    assert main(_zoom(video, "--model", "no-such-model.pt", "--out", tmp_path / "clip.png")) == 2
    assert ".mp4" in _one_line_error(capsys.readouterr().err)
    # an existing folder as --out for one image: <folder>/<stem>_x<zoom>.png (as Real-ESRGAN does)
    (tmp_path / "results").mkdir()
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--out", tmp_path / "results")) == 0
    assert read_image(tmp_path / "results" / "eye_x2.png").shape == (40, 48, 3)
    # a file as --out for a folder
    folder = tmp_path / "in"
    write_image(folder / "a.png", _rgb(12, 16))
    assert main(_zoom(folder, "--model", "no-such-model.pt", "--out", src)) == 2
    assert "not a folder" in _one_line_error(capsys.readouterr().err)


def test_zoom_folder_goes_on_after_a_failed_image(tmp_path, ckpt, capsys, monkeypatch):
    """Out of memory on one image, a broken file: the rest are written, a summary is printed, exit 1."""
    from retina_sr.inference.enhancer import BaseEnhancer

    real = BaseEnhancer.enhance

    def flaky(self, image, zoom, **kw):
        if image.shape[:2] == (30, 30):
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
        if image.shape[:2] == (31, 31):
            raise MemoryError()
        return real(self, image, zoom, **kw)

    monkeypatch.setattr(BaseEnhancer, "enhance", flaky)
    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "a.png", _rgb(12, 16, 1))
    write_image(src / "big.png", _rgb(30, 30, 2))
    write_image(src / "huge.png", _rgb(31, 31, 3))
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    write_image(src / "z.png", _rgb(12, 16, 4))
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--out", out, "--quiet")) == 1
    cap = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "z.png"]
    assert "2 ok, 3 failed of 5 images" in cap.out
    err = cap.err
    assert "big.png: out of memory" in err and "huge.png: out of memory" in err and "--tile" in err
    assert "broken.png: not a readable image" in err and "Traceback" not in err


def test_zoom_refuses_non_finite_model_output(tmp_path, capsys):
    cfg = ModelConfig(features=4, depth=1)
    model = build_model(cfg, levels=3)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    bad = tmp_path / "nan.pt"
    save_model(bad, model, {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8], "phase": "l1"})
    src = tmp_path / "eye.png"
    write_image(src, _rgb(20, 24))
    assert main(_zoom(src, "--model", bad, "--zoom", "2")) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "nan.pt" in line and "NaN" in line and "eye.png" in line
    assert not (tmp_path / "eye_x2.png").exists()


def test_zoom_keeps_16_bit(tmp_path, ckpt, capsys):
    deep = (_rgb(20, 24).astype(np.uint16) * 257 + 100).clip(0, 65535).astype(np.uint16)
    src = tmp_path / "deep.png"
    write_image(src, deep)
    for ext in (".png", ".tif"):
        out = tmp_path / f"deep_x2{ext}"
        assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--out", out)) == 0
        res = read_image(out, keep_16bit=True)
        assert res.dtype == np.uint16 and res.shape == (40, 48, 3) and (res % 257 != 0).any()
    capsys.readouterr()
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--out", tmp_path / "deep_x2.jpg")) == 0
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warn) == 1 and "deep_x2.jpg" in warn[0] and "8-bit" in warn[0] and ".py" not in err
    assert read_image(tmp_path / "deep_x2.jpg").dtype == np.uint8


def test_zoom_applies_exif_orientation(tmp_path, ckpt):
    import io as _io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    buf = _io.BytesIO()
    Image.fromarray(_rgb(20, 32)).save(buf, "JPEG", exif=exif.tobytes())
    src = tmp_path / "phone.jpg"
    src.write_bytes(buf.getvalue())
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2")) == 0
    assert read_image(tmp_path / "phone_x2.png").shape == (64, 40, 3)


def test_zoom_pickled_module_is_a_one_line_error(tmp_path, capsys):
    """A file holding a pickled module (not a state dict) names the file; PyTorch's advice to load
    it with weights_only=False (arbitrary code execution) is never shown."""
    full = tmp_path / "full_model.pt"
    torch.save(build_model(ModelConfig(features=4, depth=1), levels=3), full)
    src = tmp_path / "eye.png"
    write_image(src, _rgb(16, 16))
    for model in (full, tmp_path / "garbage.pt"):
        if model.name == "garbage.pt":
            model.write_bytes(b"nope")
        assert main(_zoom(src, "--model", model)) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert model.name in line and "weights_only" not in line
    assert main(_zoom(src, "--model", full)) == 2
    assert "LapSRN" in capsys.readouterr().err


def test_zoom_tiled_image_shows_progress(tmp_path, ckpt, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(30, 40))
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--tile", "16", "--overlap", "4")) == 0
    assert "9/9" in capsys.readouterr().err  # 3 x 3 tiles
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--tile", "16", "--overlap", "4", "--overwrite",
                      "--quiet")) == 0
    assert "9/9" not in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_zoom_cuda_without_gpu_is_a_usage_error(tmp_path, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(16, 16))
    assert main(["zoom", str(src), "--model", "no-such-model.pt", "--device", "cuda"]) == 2
    assert "--device" in _one_line_error(capsys.readouterr().err)


def test_zoom_suffix_and_ext(tmp_path, ckpt, capsys):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(12, 16))
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--suffix", "_sr", "--ext", "tif")) == 0
    assert read_image(tmp_path / "eye_sr.tif").shape == (24, 32, 3)
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    assert main(_zoom(src, "--model", ckpt, "--zoom", "2", "--ext", "jpg", "--out", out_dir)) == 0
    assert (out_dir / "eye_x2.jpg").is_file()
    folder = tmp_path / "photos"
    write_image(folder / "a.png", _rgb(8, 8))
    write_image(folder / "sub" / "b.jpg", _rgb(8, 8))
    assert main(_zoom(folder, "--model", ckpt, "--zoom", "2", "--suffix", "_x2", "--ext", "same",
                      "--out", tmp_path / "z")) == 0
    assert sorted(str(p.relative_to(tmp_path / "z")) for p in (tmp_path / "z").rglob("*.*")) == ["a_x2.png",
                                                                                               "sub/b_x2.jpg"]
    capsys.readouterr()
    assert main(_zoom(src, "--model", ckpt, "--suffix", "_sr", "--out", tmp_path / "named.png")) == 2
    assert "--suffix/--ext" in _one_line_error(capsys.readouterr().err)
    assert main(_zoom(src, "--model", ckpt, "--ext", "mp4")) == 2
    assert "--ext mp4: not an image extension" in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("device,match", [("cuda:7", "cuda"), ("gpu", "auto, cpu, cuda, cuda:N"), ("cuda:x", "cuda:N")])
def test_device_names_are_checked(tmp_path, capsys, device, match):
    src = tmp_path / "eye.png"
    write_image(src, _rgb(8, 8))
    assert main(["zoom", str(src), "--model", "no-such-model.pt", "--device", device]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert match in line and "no-such-model" not in line  # checked before the model is looked up
    assert main(["bench", "--device", device, "--no-baselines"]) == 2


def test_device_index_beyond_the_visible_gpus(monkeypatch):
    from retina_sr.inference import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"only 2 CUDA device\(s\) are visible \(cuda:0 .. cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("command", ["zoom", "export-onnx", "bench"])
def test_help_has_a_description_and_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert f"example:\n  retina-sr {command}" in text
