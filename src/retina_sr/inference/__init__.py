"""Inference: the trained LapSRN as a tool (Python API, tiling, ONNX Runtime, video, benchmark).

Public API::

    Enhancer.from_checkpoint(path_or_mlflow_uri, device="auto", fast=False)   # device: auto/cpu/cuda/cuda:N
    enhancer.enhance(image, zoom, roi=None, out_size=None, tile=None, overlap=None)  # auto tiling/overlap
    enhancer.window(image, center=(x, y), zoom=z, display_size=(w, h))
    enhancer.warmup(image_size, zooms)     # compile/capture the buckets now; enhancer.compile_stats
    export_onnx(checkpoint, out_path, zoom) -> ExportInfo   # the exact phase graph (fuse) by default
    OnnxEnhancer(path).enhance(...)   # same API, ONNX Runtime
    run_tiled(fn, x, scale, tile, overlap); receptive_radius(model, n_up); auto_tile(...)
    enhance_video(enhancer, src, dst, zoom) -> VideoReport   # file/URL/camera -> H.264, latency p50/p99
    retina_sr.inference.fastpath.fast_upscaler(model, meta, device)   # the fast path as lr -> sr (evaluation)
    retina_sr.inference.bench.run_bench(models, sizes, zooms, repeats)   # `retina-sr bench`

Modules: ``base`` (the shared zoom pipeline), ``enhancer`` (PyTorch), ``onnx`` + ``fuse`` (ONNX
Runtime), ``buckets`` + ``compiled`` + ``staging`` (the CUDA fast path's shapes, graphs and uploads),
``receptive`` + ``tiling``, ``video`` + ``video_io``, ``bench``, ``commands`` (the CLI).
"""

from .base import BaseEnhancer, DeviceError, resolve_device
from .enhancer import Enhancer, LevelOutput, resolve_checkpoint
from .image import InputError, ZoomError, check_zoom, levels_for_zoom
from .onnx import ONNX_PARITY_ATOL, ExportInfo, OnnxEnhancer, export_onnx
from .receptive import receptive_radius, tile_overlap
from .tiling import auto_tile, ramp_weights, run_tiled, tile_starts
from .video import VideoReadError, VideoReport, enhance_video, probe_video

__all__ = [
    "BaseEnhancer",
    "DeviceError",
    "Enhancer",
    "ExportInfo",
    "InputError",
    "LevelOutput",
    "ONNX_PARITY_ATOL",
    "OnnxEnhancer",
    "ZoomError",
    "check_zoom",
    "export_onnx",
    "levels_for_zoom",
    "auto_tile",
    "ramp_weights",
    "receptive_radius",
    "resolve_checkpoint",
    "resolve_device",
    "run_tiled",
    "tile_overlap",
    "tile_starts",
    "VideoReadError",
    "VideoReport",
    "enhance_video",
    "probe_video",
]
