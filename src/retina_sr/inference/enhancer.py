"""The trained LapSRN as a tool: :class:`Enhancer` (PyTorch, CPU or CUDA).

LapSRN (Lai et al., "Deep Laplacian Pyramid Networks for Fast and Accurate Super-Resolution", CVPR
2017) predicts a pyramid ``[level0, x2, x4, ...]``; the zoom logic (levels, ROI, window, tiling,
resampling, uint8 in and out) is :class:`~retina_sr.inference.base.BaseEnhancer`, shared with the
ONNX Runtime back end. Zoom 1 is the same-size deblur/denoise level.

Typical use::

    from retina_sr.inference import Enhancer
    enh = Enhancer.from_checkpoint("models/l1/model.pt")        # or "runs:/<id>/model.pt"
    big = enh.enhance(rgb_uint8, zoom=3)                          # (3H, 3W, 3) uint8
    view = enh.window(rgb_uint8, center=(800, 600), zoom=4, display_size=(1280, 720))

The CUDA fast path (``fast=True`` on a GPU) uses channels-last memory, bf16 autocast (fp16 where the
GPU has no bf16; the image branch and the residual additions stay fp32, see ``LapSRN.forward``) and
``torch.compile(mode="reduce-overhead", dynamic=False)`` with inputs padded to 64-pixel buckets:
one compiled graph and CUDA graph per (level, bucket), compiled once (:meth:`Enhancer.warmup`),
counted in :attr:`Enhancer.compile_stats` (:mod:`~retina_sr.inference.compiled`). The CPU fast
path is ONNX Runtime: :class:`retina_sr.inference.onnx.OnnxEnhancer`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, cast

import torch

from ..models.blocks import PyramidNet
from ..models.checkpoint import CheckpointError, load_model
from .base import BaseEnhancer, DeviceError, default_memory_budget, resample, resolve_device
from .compiled import BucketStats, CompiledLevels
from .receptive import receptive_radius

__all__ = ["BaseEnhancer", "Enhancer", "LevelOutput", "resolve_checkpoint", "resolve_device", "resample",
           "fast_dtype", "DeviceError", "DEFAULT_BUCKET"]

#: bucket (pixels) of the compiled path's input shapes
DEFAULT_BUCKET = 64


class LevelOutput(torch.nn.Module):
    """Wrap a LapSRN so ``forward(x)`` returns only the ``2**n_up`` output (for export/compile)."""

    def __init__(self, model: torch.nn.Module, n_up: int) -> None:
        super().__init__()
        self.model = model
        self.n_up = int(n_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(PyramidNet, self.model).top(x, self.n_up)  # only the last output where the model can


def fast_dtype() -> torch.dtype:
    """Autocast dtype of the CUDA fast path: bf16 where supported (Ampere+), else fp16."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


def resolve_checkpoint(source: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """A local ``model.pt`` for a path, a bundled model's name (``retina-sr models``) or an MLflow
    ``runs:/...`` / ``models:/...`` URI.

    URIs are downloaded with :func:`mlflow.artifacts.download_artifacts` from ``tracking_uri``
    (default: ``MLFLOW_TRACKING_URI``, else the project's ``sqlite:///mlflow.db``). A downloaded
    folder must hold exactly one ``model.pt`` (or one ``*.pt`` file).
    """
    s = os.fspath(source)
    if not s.startswith(("runs:/", "models:/")):
        from ..models.bundled import bundled_checkpoint, is_bundled_name

        if not Path(s).exists() and is_bundled_name(s):
            return bundled_checkpoint(s)  # a model shipped with the package, sha256-checked
        return Path(s)
    import mlflow

    from ..config import MlflowConfig

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MlflowConfig().tracking_uri
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=s, tracking_uri=uri))
    except Exception as err:  # noqa: BLE001 - any MLflow failure: say which URI and store
        raise CheckpointError(f"could not download {s} from the MLflow store {uri} "
                              f"({type(err).__name__}: {err}); check the run id / model name and "
                              "MLFLOW_TRACKING_URI") from None
    if local.is_file():
        return local
    found = sorted(local.rglob("model.pt")) or sorted(local.rglob("*.pt"))
    if len(found) != 1:
        raise CheckpointError(f"{s} downloaded to {local} but holds {len(found)} checkpoint files "
                              f"({[str(p.relative_to(local)) for p in found][:5]}); point the URI at one model.pt")
    return found[0]


class Enhancer(BaseEnhancer):
    """PyTorch inference for a retina-sr LapSRN checkpoint (eager fp32, or the CUDA fast path).

    Args:
        model: a LapSRN (``forward(x, n_up) -> [level0, x2, ...]``).
        meta: the checkpoint metadata (``levels`` sets :attr:`max_zoom` = ``2**levels``).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch device.
        fast: CUDA only: channels-last + bf16/fp16 autocast + ``torch.compile(mode="reduce-overhead")``
            (CUDA graphs per bucket). On CPU it warns and runs eager fp32 (use ``OnnxEnhancer``).
        compile: ``torch.compile`` the forward (None: as ``fast`` decides; False: skip it, e.g. where
            Triton is missing; True: also on CPU, where inductor compiles C++ kernels).
        amp_dtype: autocast dtype (None: as ``fast`` decides; e.g. ``torch.bfloat16`` on CPU to check
            the reduced-precision tolerance).
        channels_last: channels-last memory format (None: as ``fast`` decides).
        bucket: pad model inputs to multiples of this (None: :data:`DEFAULT_BUCKET` when compiled,
            else exact shapes; 0: exact shapes).
        memory_budget: activation bytes above which images are tiled (None: half the free GPU
            memory on CUDA, 2 GiB on CPU).
        compile_backend: ``torch.compile`` backend (``inductor``; ``eager`` for cheap shape checks).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device = "auto",
        fast: bool = False,
        compile: bool | None = None,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool | None = None,
        bucket: int | None = None,
        memory_budget: int | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        self.device = resolve_device(device)
        self.meta = dict(meta)
        self.levels = int(meta["levels"])
        self.max_zoom = 2**self.levels
        cuda_fast = bool(fast) and self.device.type == "cuda"
        if fast and not cuda_fast:
            warnings.warn("fast=True needs a CUDA device; on CPU this runs eager fp32 - the CPU fast "
                          "path is ONNX Runtime (retina_sr.inference.OnnxEnhancer / --onnx)", stacklevel=2)
        self.amp_dtype = amp_dtype if amp_dtype is not None else (fast_dtype() if cuda_fast else None)
        self.activation_bytes = 2 if self.amp_dtype in (torch.bfloat16, torch.float16) else 4
        self.channels_last = cuda_fast if channels_last is None else bool(channels_last)
        self._compile = cuda_fast if compile is None else bool(compile)
        self.bucket = (DEFAULT_BUCKET if self._compile else None) if bucket is None else (int(bucket) or None)
        self.memory_budget = default_memory_budget(self.device) if memory_budget is None else memory_budget
        self.model = model.to(self.device).eval()
        if self.channels_last:
            # Module.to takes memory_format (documented) but torch's stubs leave it out of every overload
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._compiled = CompiledLevels(lambda n: LevelOutput(self.model, n),
                                        "reduce-overhead" if self.device.type == "cuda" else None,
                                        compile_backend) if self._compile else None
        self._radius: dict[int, int] = {}
        self.needs_warmup = self._compiled is not None
        self.mode = self._describe()

    def _describe(self) -> str:
        """E.g. ``cpu eager fp32`` or ``cuda bfloat16+channels_last+compile(reduce-overhead)+bucket64``."""
        parts = [str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        if self._compiled is not None:
            mode = self._compiled.mode or "default"
            parts.append(f"compile({mode})" if self._compiled.backend == "inductor"
                         else f"compile({self._compiled.backend})")
        if self.bucket:
            parts.append(f"bucket{self.bucket}")
        return f"{self.device.type} {'eager ' if self._compiled is None else ''}" + "+".join(parts)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        fast: bool = False,
        tracking_uri: str | None = None,
        **kwargs: Any,
    ) -> Enhancer:
        """Load a checkpoint file or an MLflow ``runs:/``/``models:/`` URI (see :func:`resolve_checkpoint`)."""
        local = resolve_checkpoint(path, tracking_uri)
        model, meta = load_model(local, device="cpu")
        return cls(model, meta, device=device, fast=fast, **kwargs)

    @property
    def compile_stats(self) -> dict[tuple[int, int, int], BucketStats]:
        """Per ``(n_up, height, width)`` model input: calls and graphs compiled (empty when eager)."""
        return {} if self._compiled is None else self._compiled.stats

    def receptive_radius(self, n_up: int) -> int:
        if n_up not in self._radius:
            self._radius[n_up] = receptive_radius(self.model, n_up)
        return self._radius[n_up]

    def warmup(self, image_size, zooms, roi=None, display_size=None, calls: int | None = None) -> None:
        """As :meth:`BaseEnhancer.warmup`; by default 3 calls per zoom on the compiled CUDA path
        (compile, CUDA-graph capture, first replay), else 1."""
        if calls is None:
            calls = 3 if self._compiled is not None and self.device.type == "cuda" else 1
        super().warmup(image_size, zooms, roi=roi, display_size=display_size, calls=calls)

    def _forward(self, x: torch.Tensor, n_up: int) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            if self._compiled is None:
                return cast(PyramidNet, self.model).top(x, n_up).float().contiguous()
            # a CUDA-graph output is overwritten by the next replay: copy it out (float32, NCHW)
            return self._compiled(x, n_up).float().contiguous().clone()
