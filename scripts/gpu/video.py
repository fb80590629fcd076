"""A 3840x2160-output video (x4 from 960x540, with audio) through decode -> infer -> encode: FPS, latency.

usage (repo root): python scripts/gpu/video.py OUTDIR DEVICE [bundled|F16D3|F64D10]   (writes OUTDIR/video.json)
"""
import json
import os
import sys
from pathlib import Path

import av
import numpy as np
import torch

from retina_sr.config import ModelConfig
from retina_sr.inference import Enhancer
from retina_sr.inference.video import enhance_video
from retina_sr.models import build_model
from retina_sr.models.bundled import bundled_checkpoint
from retina_sr.models.checkpoint import save_model

out, dev = sys.argv[1], sys.argv[2]
arch = sys.argv[3] if len(sys.argv) > 3 else "bundled"
smoke = os.environ.get("SMOKE") == "1"
work = Path("/tmp/video")
work.mkdir(exist_ok=True)
w, h, n = (240, 136, 12) if smoke else (960, 540, 120)
torch.manual_seed(0)
if arch == "bundled":
    ckpt = str(bundled_checkpoint())  # the default model
else:
    f, d = (16, 3) if arch == "F16D3" else (64, 10)
    cfg = ModelConfig(features=f, depth=d)
    ckpt = str(work / "m.pt")
    save_model(ckpt, build_model(cfg, levels=3),
               {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8], "phase": "bench"})
with av.open(str(work / "clip.mp4"), "w") as c:
    v = c.add_stream("libx264", rate=60)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    a = c.add_stream("aac", rate=48000)
    base = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        for p in v.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")):
            c.mux(p)
    for p in v.encode():
        c.mux(p)
    for i in range(n * 800 // 1024):
        fr = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        fr.sample_rate, fr.pts = 48000, i * 1024
        for p in a.encode(fr):
            c.mux(p)
    for p in a.encode():
        c.mux(p)
enh = Enhancer.from_checkpoint(ckpt, device=dev, fast=True)
res: dict = {}
# NVENC first on a GPU (data-centre GPUs such as the H100/H200 have none: enhance_video falls back, with a warning)
for codec in (["h264_nvenc"] if dev.startswith("cuda") else ["libx264"]):
    try:
        rep = enhance_video(enh, str(work / "clip.mp4"), str(work / f"out_{codec}.mp4"), 4, progress=False, codec=codec)
        print(rep.summary())
        print(rep.warnings)
        res[codec] = rep.as_dict()
    except Exception as e:  # report and go on
        print(f"{codec}: {type(e).__name__}: {e}")
        res[codec] = {"error": f"{type(e).__name__}: {e}"}
Path(out, "video.json").write_text(json.dumps({"arch": arch, "input": [w, h], "zoom": 4, "frames": n, **res},
                                              indent=1, default=str))
