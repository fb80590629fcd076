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

from ..models.checkpoint import CheckpointError, load_model
from .enhancer import BaseEnhancer, LevelOutput, resolve_checkpoint
from .image import ZoomError, check_zoom, levels_for_zoom

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


def _ort_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    avail = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)


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


def export_onnx(
    checkpoint: str | os.PathLike | torch.nn.Module,
    out_path: str | os.PathLike,
    zoom: float,
    meta: dict[str, Any] | None = None,
    opset: int | None = None,
    prefer: str = "dynamo",
) -> ExportInfo:
    """Export the model of ``checkpoint`` (path, MLflow URI, or a model with ``meta``) for ``zoom``.

    The graph computes the pyramid up to ``n_up = ceil(log2 zoom)`` and outputs the ``2**n_up``
    image, so it serves every zoom in ``(2**(n_up-1), 2**n_up]`` (zoom 1: exactly 1). Input
    ``input`` (N, 3, H, W) float32 in [0, 1], output ``output`` (N, 3, H*2**n_up, W*2**n_up), H and
    W dynamic. ``prefer="torchscript"`` skips the dynamo attempt.
    """
    if isinstance(checkpoint, torch.nn.Module):
        if meta is None:
            raise ValueError("export_onnx(model, ...) needs the checkpoint meta (for 'levels')")
        model = checkpoint.cpu().eval()
    else:
        model, meta = load_model(resolve_checkpoint(checkpoint), device="cpu")
    z = check_zoom(zoom, 2 ** int(meta["levels"]))
    n_up = levels_for_zoom(z)
    module = LevelOutput(model, n_up).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, 32, 48, generator=gen)
    check = torch.rand(2, 3, 27, 41, generator=gen)  # other batch and odd sizes: dynamic axes work
    if prefer not in ("dynamo", "torchscript"):
        raise ValueError(f"prefer must be 'dynamo' or 'torchscript', got {prefer!r}")
    attempts = [("dynamo", _export_dynamo)] if prefer == "dynamo" else []
    attempts.append(("torchscript", _export_torchscript))
    dynamo_error = None
    for exporter, export in attempts:
        try:
            export(module, example, out, opset)
            diff = _max_diff_vs_torch(out, module, check)
            if not diff <= ONNX_PARITY_ATOL:
                raise RuntimeError(f"the {exporter} graph differs from PyTorch on a {tuple(check.shape)} input "
                                   f"(max abs {diff:.3g} > {ONNX_PARITY_ATOL})")
            break
        except Exception as err:  # noqa: BLE001 - a dynamo failure -> documented fallback
            if exporter == "torchscript":
                raise RuntimeError(f"ONNX export of {checkpoint} failed: {err}; dynamo attempt: {dynamo_error}") from err
            dynamo_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    import onnx

    proto = onnx.load(out)
    used_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    info = ExportInfo(str(out), exporter, n_up, 2**n_up, used_opset, diff, dynamo_error)
    props = {
        "retina_sr.n_up": str(n_up),
        "retina_sr.scale": str(2**n_up),
        "retina_sr.levels": str(int(meta["levels"])),
        "retina_sr.exporter": exporter,
        "retina_sr.meta": json.dumps(meta, default=str),
        "retina_sr.export": json.dumps(asdict(info)),
    }
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, out)
    return info


class OnnxEnhancer(BaseEnhancer):
    """ONNX Runtime inference for a file written by :func:`export_onnx` (same API as ``Enhancer``).

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
        providers: execution providers (default: CUDA when available, else CPU).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} not found: create it with `retina-sr export-onnx`")
        try:
            self.session = _ort_session(path, threads, providers)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a loadable ONNX model ({type(err).__name__}: {err})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "retina_sr.n_up" not in props:
            raise CheckpointError(f"{path} was not written by retina-sr export-onnx (no retina_sr.* metadata)")
        self.path = path
        self.n_up = int(props["retina_sr.n_up"])
        self.max_zoom = 2**self.n_up
        self.exporter = props.get("retina_sr.exporter", "?")
        self.meta = json.loads(props.get("retina_sr.meta", "{}"))
        self.input_name = self.session.get_inputs()[0].name
        self.mode = f"onnxruntime {self.session.get_providers()[0]} fp32 ({self.exporter} export)"

    def _check_n_up(self, n_up: int) -> None:
        if n_up != self.n_up:
            lo = 1 if self.n_up == 0 else 2 ** (self.n_up - 1)
            rng = "exactly 1" if self.n_up == 0 else f"in ({lo}, {self.max_zoom}]"
            raise ZoomError(f"{self.path} was exported for zooms {rng}; export another file with "
                            f"`retina-sr export-onnx --zoom <z>` for this zoom")

    def _forward(self, x: torch.Tensor, n_up: int) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: a})[0])
