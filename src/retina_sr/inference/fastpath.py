"""The fast path as one function ``lr uint8 -> sr uint8``, so the evaluation can score it as its own row.

The evaluation's own model call is eager fp32; what a user runs in real time is the fast path
(CUDA: bf16 autocast + channels-last + ``torch.compile`` with 64-px buckets; CPU: ONNX Runtime on
the phase graph), whose numbers can differ (bf16 rounding, bucket padding at the image border).
:func:`fast_upscaler` builds it once per model::

    up = fast_upscaler(model, meta, device="auto")     # or amp_dtype=torch.bfloat16 on a CPU
    sr = up(lr_uint8, scale)                            # (H*scale, W*scale, 3) uint8
    row_name = f"{name} ({up.mode})"

``amp_dtype=torch.bfloat16`` on a CPU runs the PyTorch model under CPU bf16 autocast: the same
reduced-precision arithmetic as the GPU path (not bit-identical kernels), so its quality can be
reported where no GPU is at hand.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import levels_for_zoom
from .base import resolve_device

if TYPE_CHECKING:
    from .enhancer import Enhancer
    from .onnx import OnnxEnhancer

__all__ = ["FastUpscaler", "fast_upscaler"]


class FastUpscaler:
    """``up(lr, scale)``: one RGB uint8 image enhanced at an integer ``scale`` by the fast path."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device,
                 amp_dtype: torch.dtype | None) -> None:
        self._model, self._meta, self.device = model, meta, device
        self._torch: Enhancer | None = None
        self._onnx: dict[int, OnnxEnhancer] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        if device.type == "cuda" or amp_dtype is not None:
            from .enhancer import Enhancer

            cuda = device.type == "cuda"
            self._torch = Enhancer(copy.deepcopy(model), meta, device=device, fast=cuda, amp_dtype=amp_dtype,
                                   compile=None if cuda else False)
            self.mode = self._torch.mode
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="retina-sr-fast-")
            self.mode = "onnxruntime (phase graph)"

    def _enhancer(self, scale: int) -> Enhancer | OnnxEnhancer:
        if self._torch is not None:
            return self._torch
        n_up = levels_for_zoom(scale)
        if n_up not in self._onnx:
            from .onnx import OnnxEnhancer, export_onnx

            assert self._tmp is not None  # made in __init__ whenever there is no torch enhancer
            path = Path(self._tmp.name) / f"x{2**n_up}.onnx"
            export_onnx(self._model, path, scale, meta=self._meta)
            self._onnx[n_up] = OnnxEnhancer(path, threads=torch.get_num_threads(), device="cpu")
            self.mode = self._onnx[n_up].mode
        return self._onnx[n_up]

    def __call__(self, lr: np.ndarray, scale: int) -> np.ndarray:
        return np.asarray(self._enhancer(int(scale)).enhance(np.asarray(lr), int(scale)))  # numpy in, numpy out

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def fast_upscaler(model: torch.nn.Module, meta: dict[str, Any], device: str | torch.device = "auto",
                  amp_dtype: torch.dtype | None = None) -> FastUpscaler:
    """The fast path of ``device`` for ``model`` (module doc); ``amp_dtype`` forces PyTorch autocast."""
    return FastUpscaler(model.cpu().eval(), dict(meta), resolve_device(device), amp_dtype)
