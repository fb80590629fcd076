"""The digital zoom window panned and zoomed at random on 4K frames: compiles per bucket, latency p50/p99.

usage (repo root): python scripts/gpu/window.py OUTDIR DEVICE   (writes OUTDIR/window.json)
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from retina_sr.inference import Enhancer
from retina_sr.models.bundled import bundled_checkpoint

out, dev = sys.argv[1], sys.argv[2]
smoke = os.environ.get("SMOKE") == "1"
W, H, DW, DH = (480, 270, 240, 136) if smoke else (3840, 2160, 1920, 1080)
BUNDLED = str(bundled_checkpoint())  # the default model: what a user zooms with
enh = Enhancer.from_checkpoint(BUNDLED, device=dev, fast=True)
frame = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
t = time.perf_counter()
enh.warmup((W, H), [2.0, 4.0, 8.0], display_size=(DW, DH))
warm = time.perf_counter() - t
zooms = [2.0, 1.99, 4.0, 3.9, 8.0, 7.8]  # each pair shares a pyramid level and a 64-px bucket
before = {k: v.compiles for k, v in getattr(enh, "compile_stats", {}).items()}
rng, lat = np.random.default_rng(1), []
for _ in range(10 if smoke else 200):
    z = float(rng.choice(zooms))
    c = (float(rng.uniform(0, W)), float(rng.uniform(0, H)))
    t = time.perf_counter()
    enh.window(frame, c, z, (DW, DH))
    lat.append(time.perf_counter() - t)
after = {k: v.compiles for k, v in getattr(enh, "compile_stats", {}).items()}
res = {"model": BUNDLED, "mode": enh.mode, "frame": [W, H], "display": [DW, DH], "warmup_s": round(warm, 1),
       "buckets": {str(k): v for k, v in after.items()},
       "recompiles_after_warmup": sum(after.values()) - sum(before.values()),
       "latency_ms_p50": float(np.percentile(lat, 50) * 1e3), "latency_ms_p99": float(np.percentile(lat, 99) * 1e3)}
print(json.dumps(res, indent=1))
Path(out, "window.json").write_text(json.dumps(res, indent=1))
