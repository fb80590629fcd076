"""Video: H.264 with audio and timestamps passed through, latency percentiles, the mp4v fallback,
live sources (injected frames) with dropping, the headless preview, and the live CLI."""

from __future__ import annotations

import json
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from retina_sr.cli import main
from retina_sr.inference.enhancer import BaseEnhancer
from retina_sr.inference.video import enhance_video, probe_video
from retina_sr.inference.video_io import IterSource, Preview, VideoReadError


class Nearest(BaseEnhancer):
    """A model stand-in: nearest-neighbour 2**n_up upsampling (fast, exact sizes)."""

    max_zoom = 8
    mode = "nearest (test)"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def _forward(self, x, n_up):
        time.sleep(self.delay)
        return torch.nn.functional.interpolate(x, scale_factor=2**n_up, mode="nearest")


def _write_clip(path, frames=12, size=(32, 24), fps=10, audio=True):
    """A tiny H.264 clip with an AAC track (PyAV), timestamps in a 1/1000 time base with a gap."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = *size, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        a = out.add_stream("aac", rate=8000) if audio else None
        for i in range(frames):
            img = np.full((size[1], size[0], 3), 20 * i % 256, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i * 100 + (300 if i >= 6 else 0)  # a 0.3 s gap: variable timing to keep
            f.time_base = Fraction(1, 1000)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if a is not None:
            for i in range(15):
                af = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
                af.sample_rate, af.pts = 8000, i * 1024
                for p in a.encode(af):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return path


def _streams(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        pts = [round(float(f.pts * f.time_base), 3) for f in c.decode(video=0)]
        audio = [s.codec_context.name for s in c.streams.audio]
        return v.codec_context.name, (v.codec_context.width, v.codec_context.height), pts, audio


def test_h264_with_audio_and_timestamps(tmp_path):
    src = _write_clip(tmp_path / "clip.mp4")
    rep = enhance_video(Nearest(), src, tmp_path / "out.mp4", zoom=2, progress=False, crf=20)
    codec, size, pts, audio = _streams(tmp_path / "out.mp4")
    _, _, src_pts, _ = _streams(src)
    assert codec == "h264" and size == (64, 48) and audio == ["aac"]
    assert pts == src_pts and pts[6] - pts[5] == pytest.approx(0.4)  # the gap is kept
    assert rep.frames == 12 and rep.out_size == (64, 48) and "libx264" in rep.encoder and "crf 20" in rep.encoder
    assert 0 < rep.latency_p50_ms <= rep.latency_p99_ms and rep.enhance_p50_ms > 0
    assert "latency p50" in rep.summary() and not rep.warnings
    assert probe_video(tmp_path / "out.mp4")[1:] == (12, 64, 48)


def test_odd_output_size_is_padded_and_said(tmp_path):
    src = _write_clip(tmp_path / "clip.mp4", frames=3, audio=False)
    rep = enhance_video(Nearest(), src, tmp_path / "out.mp4", zoom=1, roi=(0, 0, 11, 9), progress=False)
    assert rep.out_size == (11, 9)
    assert any("padded from 11x9 to 12x10" in w for w in rep.warnings)
    assert _streams(tmp_path / "out.mp4")[1] == (12, 10)


def test_encoder_fallbacks_are_recorded(tmp_path, monkeypatch):
    """An encoder that cannot open (no NVENC here) -> libx264; PyAV unable to write at all -> mp4v via
    OpenCV. Either way the report says so."""
    import retina_sr.inference.video_io as vio

    src = _write_clip(tmp_path / "clip.mp4", frames=4)
    rep = enhance_video(Nearest(), src, tmp_path / "out.mp4", zoom=2, progress=False, codec="no_such_encoder")
    assert rep.encoder.startswith("libx264") and _streams(tmp_path / "out.mp4")[0] == "h264"
    assert any("no_such_encoder via PyAV failed" in w and "wrote libx264 instead" in w for w in rep.warnings)

    def broken(*args, **kwargs):
        raise av.error.FFmpegError(-1, "simulated PyAV failure")

    monkeypatch.setattr(vio, "PyAVSink", broken)
    rep = enhance_video(Nearest(), src, tmp_path / "old.mp4", zoom=2, progress=False)
    assert rep.encoder == "mp4v (OpenCV fallback)" and _streams(tmp_path / "old.mp4")[0] == "mpeg4"
    assert any("simulated PyAV failure" in w and "mp4v" in w and "audio dropped" in w for w in rep.warnings)


def test_live_source_drops_frames_to_keep_latency_bounded(tmp_path):
    def camera():  # 30 frames at ~100 FPS while inference takes 30 ms: it must fall behind
        for i in range(30):
            time.sleep(0.01)
            yield np.full((16, 16, 3), i, np.uint8)

    rep = enhance_video(Nearest(delay=0.03), IterSource(camera(), fps=100, live=True), tmp_path / "live.mp4", 2,
                        progress=False)
    assert rep.dropped > 0 and rep.frames + rep.dropped <= 30
    assert rep.latency_p99_ms < 200  # newest frame only: no queue of stale frames builds up
    assert _streams(tmp_path / "live.mp4")[1] == (32, 32)


def test_max_frames_and_no_output(tmp_path):
    frames = [np.zeros((8, 8, 3), np.uint8)] * 20
    rep = enhance_video(Nearest(), IterSource(frames, fps=25), None, 2, progress=False, max_frames=5)
    assert rep.frames == 5 and rep.output is None and rep.encoder == ""


def test_headless_preview_disables_itself(tmp_path, monkeypatch):
    import cv2

    def no_gui(*a, **k):
        raise cv2.error("The function is not implemented. Rebuild the library with GTK+ support")

    monkeypatch.setattr(cv2, "imshow", no_gui)
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    rep = enhance_video(Nearest(), IterSource(frames, fps=25), tmp_path / "o.mp4", 2, progress=False, preview=True)
    assert rep.frames == 3 and any("preview window unavailable" in w for w in rep.warnings)
    p = Preview()
    assert p.show(frames[0]) is True and not p.enabled


def test_preview_q_stops(tmp_path, monkeypatch):
    import cv2

    shown = []
    monkeypatch.setattr(cv2, "imshow", lambda title, img: shown.append(img.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: ord("q") if len(shown) >= 2 else -1)
    monkeypatch.setattr(cv2, "destroyWindow", lambda title: None)
    frames = [np.zeros((8, 8, 3), np.uint8)] * 10
    rep = enhance_video(Nearest(), IterSource(frames, fps=25), None, 2, progress=False, preview=True)
    assert rep.frames == 2 and shown == [(16, 16, 3), (16, 16, 3)]


def test_unreadable_and_missing_sources(tmp_path):
    with pytest.raises(VideoReadError, match="not found"):
        enhance_video(Nearest(), tmp_path / "missing.mp4", tmp_path / "o.mp4", 2, progress=False)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoReadError, match="cannot open"):
        enhance_video(Nearest(), bad, tmp_path / "o.mp4", 2, progress=False)


@pytest.fixture
def ckpt(tmp_path):
    from retina_sr.config import ModelConfig
    from retina_sr.models import build_model
    from retina_sr.models.checkpoint import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    path = tmp_path / "model.pt"
    save_model(path, build_model(cfg, levels=3), {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8],
                                                  "phase": "l1"})
    return path


def test_cli_video_report_and_quality_options(tmp_path, ckpt, capsys):
    src = _write_clip(tmp_path / "clip.mp4", frames=5)
    report = tmp_path / "r.json"
    assert main(["zoom", str(src), "--model", str(ckpt), "--zoom", "2", "--device", "cpu", "--crf", "28",
                 "--report", str(report), "--quiet"]) == 0
    rep = json.loads(report.read_text())
    assert rep["frames"] == 5 and "crf 28" in rep["encoder"] and rep["latency_p99_ms"] >= rep["latency_p50_ms"]
    assert _streams(tmp_path / "clip_x2.mp4")[3] == ["aac"]


def test_cli_live_source_errors(tmp_path, ckpt, capsys):
    # a camera index with neither --out nor --preview, then a camera that is not there
    assert main(["zoom", "7", "--model", str(ckpt), "--device", "cpu"]) == 2
    assert "--preview" in capsys.readouterr().err
    assert main(["zoom", "7", "--model", str(ckpt), "--device", "cpu", "--out", str(tmp_path / "rec.mp4")]) == 2
    assert "camera 7" in capsys.readouterr().err
