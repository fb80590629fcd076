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
Names are loaded on first use (``lazy_loader``, scientific Python's SPEC 1), as in every package here: so
``retina-sr --help`` does not pay for torch. ``levels_for_zoom`` is :func:`retina_sr.config.levels_for_zoom`.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submod_attrs={
    "base": ["BaseEnhancer", "DeviceError", "resolve_device"],
    "enhancer": ["Enhancer", "LevelOutput", "resolve_checkpoint"],
    "image": ["InputError", "ZoomError", "check_zoom", "levels_for_zoom"],
    "onnx": ["ONNX_PARITY_ATOL", "ExportInfo", "OnnxEnhancer", "export_onnx"],
    "receptive": ["receptive_radius", "tile_overlap"],
    "tiling": ["auto_tile", "ramp_weights", "run_tiled", "tile_starts"],
    "video": ["VideoReadError", "VideoReport", "enhance_video", "probe_video"],
})
