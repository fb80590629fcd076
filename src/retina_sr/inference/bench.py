"""End-to-end speed benchmark: bicubic, an ESPCN-class baseline and the project's LapSRN models.

Every timed call is "end to end" for one frame: the uint8 RGB host frame goes in (conversion to a
float tensor, host-to-device copy), is enhanced, and comes back as a uint8 host image of the output
size. Latency is measured with ``time.perf_counter`` after one warm-up call (which also triggers
``torch.compile``/CUDA-graph capture on the GPU fast path); the table reports the median and 95th
percentile latency and the FPS of the median.

Methods:
* ``bicubic``: ``cv2.resize(..., INTER_CUBIC)`` on the host.
* ``espcn``: ESPCN (Shi et al., "Real-Time Single Image and Video Super-Resolution Using an
  Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016): conv5x5(64)-tanh-conv3x3(32)-tanh-
  conv3x3(3r^2)-PixelShuffle(r), RANDOM weights (speed only: its output is meaningless).
* each LapSRN checkpoint (or a random-weight architecture given as ``--arch F64D10``), eager fp32
  and the fast path: ONNX Runtime on CPU, bf16 autocast + channels-last + ``torch.compile`` (CUDA
  graphs) on CUDA.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = ["BenchRow", "ESPCN", "parse_sizes", "parse_arch", "time_call", "find_models", "run_bench", "format_table"]


@dataclass
class BenchRow:
    method: str  # bicubic | espcn | lapsrn
    model: str  # label: checkpoint path or architecture
    backend: str  # e.g. "opencv", "cpu eager fp32", "onnxruntime CPUExecutionProvider fp32 (dynamo export)"
    device: str
    zoom: float
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    repeats: int
    median_ms: float
    p95_ms: float
    fps: float
    note: str = ""


class ESPCN(torch.nn.Module):
    """ESPCN (Shi et al. 2016) with the paper's 5-3-3 layout; random weights unless trained."""

    def __init__(self, scale: int, features: int = 64) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, features, 5, padding=2), torch.nn.Tanh(),
            torch.nn.Conv2d(features, features // 2, 3, padding=1), torch.nn.Tanh(),
            torch.nn.Conv2d(features // 2, 3 * scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1920x1080,3840x2160"`` -> ``[(1920, 1080), (3840, 2160)]`` (output width x height)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)[xX](\d+)", part)
        if not m or int(m[1]) < 1 or int(m[2]) < 1:
            raise ValueError(f"size {part!r} is not WIDTHxHEIGHT (e.g. 1920x1080)")
        out.append((int(m[1]), int(m[2])))
    if not out:
        raise ValueError("no output size given (e.g. --sizes 1920x1080)")
    return out


def parse_arch(text: str) -> tuple[int, int]:
    """``"F64D10"`` -> ``(64, 10)``: a random-weight LapSRN of that features/depth (speed only)."""
    m = re.fullmatch(r"[Ff](\d+)[Dd](\d+)", text.strip())
    if not m:
        raise ValueError(f"architecture {text!r} is not F<features>D<depth> (e.g. F16D3, F64D10)")
    return int(m[1]), int(m[2])


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _row(method: str, model: str, backend: str, device: str, zoom: float, in_size: tuple[int, int],
         out_size: tuple[int, int], times: list[float], note: str = "") -> BenchRow:
    med = float(np.median(times))
    return BenchRow(method, model, backend, device, zoom, in_size, out_size, len(times), med * 1e3,
                    float(np.percentile(times, 95)) * 1e3, 1.0 / med if med > 0 else math.inf, note)


def find_models(root: str | Path = "models") -> list[Path]:
    """Every ``model.pt`` under ``root`` (``models/<phase>/model.pt``, ``models/modified/<v>/model.pt``)."""
    root = Path(root)
    return sorted(root.rglob("model.pt")) if root.is_dir() else []


def _frame(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB uint8 frame (content does not change the timing of dense convs)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _espcn_fn(net: torch.nn.Module, frame: np.ndarray, device: torch.device) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float().div_(255)
            y = net(x).clamp_(0, 1).mul_(255).round_().to(torch.uint8)[0].permute(1, 2, 0)
            return y.cpu().numpy()
    return run


def run_bench(
    models: list[str | Path],
    sizes: list[tuple[int, int]],
    zooms: list[float],
    repeats: int = 3,
    device: str = "auto",
    archs: list[tuple[int, int]] = (),
    fast: bool = True,
    baselines: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time every method at every output size and zoom; returns ``{"env": ..., "rows": [...]}``."""
    from ..config import ModelConfig
    from ..models import build_model
    from ..models.checkpoint import load_model
    from ..runtime import device_name, pick_device
    from .enhancer import Enhancer
    from .image import levels_for_zoom
    from .onnx import OnnxEnhancer, export_onnx

    dev = pick_device(device)
    rows: list[BenchRow] = []
    # (label, model, meta) for checkpoints and random-weight architectures
    entries: list[tuple[str, torch.nn.Module, dict[str, Any]]] = []
    for p in models:
        model, meta = load_model(p, device="cpu")
        cfg = meta["model"]
        entries.append((f"{p} (F{cfg['features']} D{cfg['depth']})", model, meta))
    for f, d in archs:
        cfg = ModelConfig(features=f, depth=d)
        torch.manual_seed(0)
        entries.append((f"LapSRN F{f} D{d} (random weights)", build_model(cfg, levels=3),
                        {"model": cfg.model_dump(), "levels": 3, "scales": [1, 2, 4, 8], "phase": "bench"}))
    tmp = tempfile.TemporaryDirectory(prefix="retina-sr-bench-")
    try:
        for w, h in sizes:
            for z in zooms:
                in_size = (max(1, round(w / z)), max(1, round(h / z)))
                frame = _frame(*in_size)
                out_size = (w, h)
                if baselines:
                    t = time_call(lambda: cv2.resize(frame, out_size, interpolation=cv2.INTER_CUBIC), repeats)
                    rows.append(_row("bicubic", "OpenCV INTER_CUBIC", "opencv", "cpu", z, in_size, out_size, t))
                    log(_fmt(rows[-1]))
                    if float(z).is_integer() and z >= 2:
                        torch.manual_seed(0)
                        net = ESPCN(int(z)).to(dev).eval()
                        t = time_call(_espcn_fn(net, frame, dev), repeats)
                        rows.append(_row("espcn", "ESPCN 64-32 (random weights)", f"{dev.type} eager fp32",
                                         dev.type, z, in_size, (in_size[0] * int(z), in_size[1] * int(z)), t,
                                         "random weights: speed only"))
                        log(_fmt(rows[-1]))
                for label, model, meta in entries:
                    if z > 2 ** int(meta["levels"]):
                        log(f"skip {label} at x{z}: above its max zoom x{2 ** int(meta['levels'])}")
                        continue
                    enh = Enhancer(model, meta, device=dev)
                    t = time_call(lambda: enh.enhance(frame, z), repeats)
                    rows.append(_row("lapsrn", label, enh.mode, dev.type, z, in_size, out_size, t))
                    log(_fmt(rows[-1]))
                    if not fast:
                        continue
                    if dev.type == "cuda":
                        # a copy: the fast path converts its module to channels_last in place
                        fenh = Enhancer(copy.deepcopy(model), meta, device=dev, fast=True)
                    else:
                        onnx_path = Path(tmp.name) / f"m{len(rows)}_x{2 ** levels_for_zoom(z)}.onnx"
                        export_onnx(model, onnx_path, z, meta=meta)
                        fenh = OnnxEnhancer(onnx_path, threads=torch.get_num_threads())
                    # torch.compile(mode="reduce-overhead") compiles and warms up on the first call and
                    # records its CUDA graph on the second: neither may land in the timed calls (p95)
                    warm = 3 if dev.type == "cuda" else 1
                    t = time_call(lambda: fenh.enhance(frame, z), repeats, warmup=warm)
                    rows.append(_row("lapsrn", label, fenh.mode, dev.type, z, in_size, out_size, t,
                                     f"{warm} warm-up calls (compile, CUDA-graph capture)" if warm > 1 else ""))
                    log(_fmt(rows[-1]))
    finally:
        tmp.cleanup()
    env = {"device": device_name(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "repeats": repeats, "warmup": 1, "end_to_end": "uint8 host frame in -> uint8 host image out",
           "espcn": "random weights, speed only (Shi et al. 2016 layout)"}
    return {"env": env, "rows": [asdict(r) for r in rows]}


def _fmt(r: BenchRow) -> str:
    return (f"{r.method:8s} {r.model[:44]:44s} {r.backend[:52]:52s} x{r.zoom:<4g} "
            f"{r.in_size[0]}x{r.in_size[1]}->{r.out_size[0]}x{r.out_size[1]} "
            f"median {r.median_ms:9.1f} ms  p95 {r.p95_ms:9.1f} ms  {r.fps:8.2f} FPS")


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of a :func:`run_bench` result."""
    env = result["env"]
    lines = [f"device: {env['device']}, torch {env['torch']}, {env['repeats']} repeats after 1 warm-up, "
             f"end to end ({env['end_to_end']})", "",
             "| method | model | backend | zoom | input | output | median ms | p95 ms | FPS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['model']} | {r['backend']} | {r['zoom']:g} | "
                     f"{r['in_size'][0]}x{r['in_size'][1]} | {r['out_size'][0]}x{r['out_size'][1]} | "
                     f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['fps']:.2f} |")
    return "\n".join(lines)
