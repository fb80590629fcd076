"""ONNX export with dynamic height/width and inference through ONNX Runtime (the CPU fast path).

:func:`export_onnx` writes the LapSRN pyramid up to the level a zoom needs (one output: the
``2**ceil(log2 zoom)`` image) with dynamic batch, height and width. It first tries torch's
``torch.export``-based exporter (``dynamo=True`` with ``dynamic_shapes``) and falls back to the
TorchScript exporter (``dynamo=False`` with ``dynamic_axes``) when that raises or when the exported
graph does not reproduce PyTorch on a second, differently sized input; which one produced the file
(and why the first failed) is returned and stored in the file's metadata (``retina_sr.exporter``).

:class:`OnnxEnhancer` runs such a file with ONNX Runtime behind the same ``enhance``/``window`` API
as :class:`~retina_sr.inference.enhancer.Enhancer`. Parity with eager fp32 PyTorch is tested at a
max abs difference below ``1e-4`` (on the [0, 1] scale).

By default the exported graph is the exact phase form of :mod:`~retina_sr.inference.fuse` (2x
upsampling as four coarse-grid phases, the last level without full-resolution feature maps),
which ONNX Runtime's CPU kernels run several times faster than ``ConvTranspose`` and cubic
``Resize``; ``fuse=False`` exports the model as written. The file's metadata records which graph
(``retina_sr.graph``), which exporter, and the receptive-field radius the tiling needs.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import levels_for_zoom
from ..models.checkpoint import CheckpointError, load_model
from ..models.lrhead import LRHead
from .base import DEFAULT_CPU_BUDGET, BaseEnhancer, resolve_device
from .enhancer import LevelOutput, resolve_checkpoint
from .fuse import PhaseLapSRN, phase_lrhead
from .image import ZoomError, check_zoom
from .receptive import receptive_radius

__all__ = ["ExportInfo", "export_onnx", "OnnxEnhancer", "ONNX_PARITY_ATOL"]

#: max abs difference (output scale [0, 1]) held between ONNX Runtime fp32 and eager PyTorch fp32
ONNX_PARITY_ATOL = 1e-4


@dataclass
class ExportInfo:
    """What :func:`export_onnx` wrote."""

    path: str
    exporter: str  # "dynamo" | "torchscript"
    n_up: int
    scale: int
    opset: int
    parity_max_abs: float  # ONNX Runtime vs PyTorch on the check input (not the example input)
    dynamo_error: str | None = None  # why the dynamo exporter was not used, when it was not
    graph: str = "plain"  # "phase" (fuse.PhaseLapSRN) | "plain" (the model as written)
    graph_error: str | None = None  # why the phase graph was not used, when it was asked for
    receptive_radius: int = 0  # input pixels (tiling overlap, ROI context)


def _ort_session(path: str | os.PathLike, threads: int | None = None, providers: list | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # conv+activation fusion, NCHWc
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    avail = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)


def providers_for(device: str | torch.device | None) -> list | None:
    """ONNX Runtime execution providers for a device name (None: CUDA when available, else CPU)."""
    if device is None or str(device) == "auto":
        return None
    dev = resolve_device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


def _max_diff_vs_torch(path: Path, module: torch.nn.Module, x: torch.Tensor) -> float:
    sess = _ort_session(path, threads=torch.get_num_threads())
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        ref = module(x).numpy()
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got - ref).max())


def _export_dynamo(module: torch.nn.Module, x: torch.Tensor, out: Path, opset: int | None) -> None:
    dyn = torch.export.Dim.DYNAMIC
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    # the exporter logs one line per torchvision op it cannot register (torchvision is not installed)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), out, dynamo=True, input_names=["input"], output_names=["output"],
                              dynamic_shapes={"x": {0: dyn, 2: dyn, 3: dyn}}, external_data=False,
                              verbose=False, **kwargs)
    finally:
        quiet.setLevel(level)


def _export_torchscript(module: torch.nn.Module, x: torch.Tensor, out: Path, opset: int | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), out, dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                        "output": {0: "batch", 2: "out_height", 3: "out_width"}},
                          opset_version=opset or 17)


def _try_export(module: torch.nn.Module, reference: torch.nn.Module, out: Path, opset: int | None,
                prefer: str) -> tuple[str, float, str | None]:
    """Export ``module`` (dynamo first unless ``prefer="torchscript"``) and check it against
    ``reference``; ``(exporter, parity, dynamo error)`` or an exception."""
    if prefer not in ("dynamo", "torchscript"):
        raise ValueError(f"prefer must be 'dynamo' or 'torchscript', got {prefer!r}")
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, 32, 48, generator=gen)
    check = torch.rand(2, 3, 27, 41, generator=gen)  # other batch and odd sizes: dynamic axes work
    attempts = [("dynamo", _export_dynamo)] if prefer == "dynamo" else []
    attempts.append(("torchscript", _export_torchscript))
    dynamo_error = None
    for exporter, export in attempts:
        try:
            export(module, example, out, opset)
            diff = _max_diff_vs_torch(out, reference, check)
            if not diff <= ONNX_PARITY_ATOL:
                raise RuntimeError(f"the {exporter} graph differs from PyTorch on a {tuple(check.shape)} input "
                                   f"(max abs {diff:.3g} > {ONNX_PARITY_ATOL})")
            return exporter, diff, dynamo_error
        except Exception as err:  # noqa: BLE001 - a dynamo failure -> documented fallback
            if exporter == "torchscript":
                raise RuntimeError(f"{err}; dynamo attempt: {dynamo_error}") from err
            dynamo_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    raise AssertionError("unreachable")  # pragma: no cover


def _write_metadata(out: Path, info: ExportInfo, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(out)
    info.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    props = {
        "retina_sr.n_up": str(info.n_up),
        "retina_sr.scale": str(info.scale),
        "retina_sr.levels": str(int(meta["levels"])),
        "retina_sr.exporter": info.exporter,
        "retina_sr.graph": info.graph,
        "retina_sr.receptive_radius": str(info.receptive_radius),
        "retina_sr.meta": json.dumps(meta, default=str),
        "retina_sr.export": json.dumps(asdict(info)),
    }
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, out)


def export_onnx(
    checkpoint: str | os.PathLike | torch.nn.Module,
    out_path: str | os.PathLike,
    zoom: float,
    meta: dict[str, Any] | None = None,
    opset: int | None = None,
    prefer: str = "dynamo",
    fuse: bool = True,
) -> ExportInfo:
    """Export the model of ``checkpoint`` (path, MLflow URI, or a model with ``meta``) for ``zoom``.

    The graph computes the pyramid up to ``n_up = ceil(log2 zoom)`` and outputs the ``2**n_up``
    image, so it serves every zoom in ``(2**(n_up-1), 2**n_up]`` (zoom 1: exactly 1). Input
    ``input`` (N, 3, H, W) float32 in [0, 1], output ``output`` (N, 3, H*2**n_up, W*2**n_up), H and
    W dynamic. ``prefer="torchscript"`` skips the dynamo attempt; ``fuse=False`` exports the plain
    graph instead of the phase form (module doc; a phase graph that fails the parity check falls
    back to the plain one, and ``graph_error`` says why).
    """
    if isinstance(checkpoint, torch.nn.Module):
        if meta is None:
            raise ValueError("export_onnx(model, ...) needs the checkpoint meta (for 'levels')")
        model = checkpoint.cpu().eval()
    else:
        model, meta = load_model(resolve_checkpoint(checkpoint), device="cpu")
    n_up = levels_for_zoom(check_zoom(zoom, 2 ** int(meta["levels"])))
    reference = LevelOutput(model, n_up).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    phase = LevelOutput(phase_lrhead(model), n_up) if isinstance(model, LRHead) else PhaseLapSRN(model, n_up)
    graphs: list[tuple[str, torch.nn.Module]] = [("phase", phase.eval())] if fuse else []
    graphs.append(("plain", reference))
    graph_error = None
    for graph, module in graphs:
        try:
            exporter, diff, dynamo_error = _try_export(module, reference, out, opset, prefer)
            break
        except Exception as err:  # noqa: BLE001 - the phase graph falls back to the plain one
            if graph == "plain":
                raise RuntimeError(f"ONNX export of {checkpoint} failed: {err}; phase graph: {graph_error}") from err
            graph_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    info = ExportInfo(str(out), exporter, n_up, 2**n_up, 0, diff, dynamo_error, graph, graph_error,
                      receptive_radius(model, n_up))
    _write_metadata(out, info, meta)
    return info


class OnnxEnhancer(BaseEnhancer):
    """ONNX Runtime inference for a file written by :func:`export_onnx` (same API as ``Enhancer``).

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
        providers: execution providers (default: as ``device`` says).
        device: ``auto`` (CUDA provider when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        memory_budget: activation bytes above which images are tiled (default 2 GiB).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list | None = None,
                 device: str | torch.device | None = None, memory_budget: int | None = DEFAULT_CPU_BUDGET):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} not found: create it with `retina-sr export-onnx`")
        try:
            self.session = _ort_session(path, threads, providers or providers_for(device))
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a loadable ONNX model ({type(err).__name__}: {err})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "retina_sr.n_up" not in props:
            raise CheckpointError(f"{path} was not written by retina-sr export-onnx (no retina_sr.* metadata)")
        self.path = path
        self.n_up = int(props["retina_sr.n_up"])
        self.max_zoom = 2**self.n_up
        self.exporter = props.get("retina_sr.exporter", "?")
        self.graph = props.get("retina_sr.graph", "plain")
        self.meta = json.loads(props.get("retina_sr.meta", "{}"))
        self._radius = int(props.get("retina_sr.receptive_radius", 0)) or None
        self.memory_budget = memory_budget
        self.input_name = self.session.get_inputs()[0].name
        self.mode = f"onnxruntime {self.session.get_providers()[0]} fp32 ({self.graph} graph, {self.exporter} export)"

    def receptive_radius(self, n_up: int) -> int:
        if self._radius is None:  # a file from before the radius was stored: from its architecture
            from ..config import ModelConfig
            from ..models import build_model

            self._radius = receptive_radius(build_model(ModelConfig(**self.meta["model"]), self.n_up), self.n_up)
        return self._radius

    def _check_n_up(self, n_up: int) -> None:
        if n_up != self.n_up:
            lo = 1 if self.n_up == 0 else 2 ** (self.n_up - 1)
            rng = "exactly 1" if self.n_up == 0 else f"in ({lo}, {self.max_zoom}]"
            raise ZoomError(f"{self.path} was exported for zooms {rng}; export another file with "
                            f"`retina-sr export-onnx --zoom <z>` for this zoom")

    def _forward(self, x: torch.Tensor, n_up: int) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: a})[0])
