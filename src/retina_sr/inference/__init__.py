"""Inference: the trained LapSRN as a tool (Python API, tiling, ONNX Runtime, video, benchmark).

Public API::

    Enhancer.from_checkpoint(path_or_mlflow_uri, device="auto", fast=False)
    enhancer.enhance(image, zoom, roi=None, out_size=None, tile=None, overlap=32)
    enhancer.window(image, center=(x, y), zoom=z, display_size=(w, h))
    export_onnx(checkpoint, out_path, zoom) -> ExportInfo
    OnnxEnhancer(path).enhance(...)   # same API, ONNX Runtime
    run_tiled(fn, x, scale, tile, overlap)
    enhance_video(enhancer, src, dst, zoom) -> VideoReport   # threaded decode/infer/encode
    retina_sr.inference.bench.run_bench(models, sizes, zooms, repeats)   # `retina-sr bench`
"""

from .enhancer import BaseEnhancer, Enhancer, LevelOutput, resolve_checkpoint
from .image import InputError, ZoomError, check_zoom, levels_for_zoom
from .onnx import ONNX_PARITY_ATOL, ExportInfo, OnnxEnhancer, export_onnx
from .tiling import ramp_weights, run_tiled, tile_starts
from .video import VideoReadError, VideoReport, enhance_video, probe_video

__all__ = [
    "BaseEnhancer",
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
    "ramp_weights",
    "resolve_checkpoint",
    "run_tiled",
    "tile_starts",
    "VideoReadError",
    "VideoReport",
    "enhance_video",
    "probe_video",
]
