"""The trained LapSRN as a tool: :class:`Enhancer` (PyTorch, CPU or CUDA) and the shared zoom logic.

LapSRN (Lai et al., "Deep Laplacian Pyramid Networks for Fast and Accurate Super-Resolution", CVPR
2017) predicts a pyramid ``[level0, x2, x4, ...]``. A zoom ``z`` in ``[1, max_zoom]`` runs
``n_up = ceil(log2 z)`` levels; when ``z`` is not a power of two the ``2**n_up`` output is resampled
down to ``round(z * size)`` with OpenCV's ``INTER_AREA`` (pixel-area averaging, the anti-aliased
choice for shrinking). Zoom 1 is the same-size deblur/denoise level.

Typical use::

    from retina_sr.inference import Enhancer
    enh = Enhancer.from_checkpoint("models/l1/model.pt")        # or "runs:/<id>/model.pt"
    big = enh.enhance(rgb_uint8, zoom=3)                          # (3H, 3W, 3) uint8
    view = enh.window(rgb_uint8, center=(800, 600), zoom=4, display_size=(1280, 720))

The CUDA fast path (``fast=True`` on a GPU) uses channels-last memory, bf16 autocast (fp16 where the
GPU has no bf16) and ``torch.compile(mode="reduce-overhead")``, which captures CUDA graphs for each
fixed frame size (the surgeon's zoom is a video of one size). The CPU fast path is ONNX Runtime:
:class:`retina_sr.inference.onnx.OnnxEnhancer`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..models.checkpoint import CheckpointError, load_model
from .image import InputError, check_zoom, from_tensor, levels_for_zoom, to_tensor
from .tiling import run_tiled

__all__ = ["BaseEnhancer", "Enhancer", "LevelOutput", "resolve_checkpoint", "resample", "fast_dtype"]

Roi = tuple[int, int, int, int]


class LevelOutput(torch.nn.Module):
    """Wrap a LapSRN so ``forward(x)`` returns only the ``2**n_up`` output (for export/compile)."""

    def __init__(self, model: torch.nn.Module, n_up: int) -> None:
        super().__init__()
        self.model = model
        self.n_up = int(n_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, n_up=self.n_up)[-1]


def resample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, C, H, W) float tensor to ``size`` = (width, height) on the host.

    Shrinking uses ``cv2.INTER_AREA`` (area averaging); enlarging (only ever by rounding, at most a
    pixel or two) uses ``cv2.INTER_CUBIC``.
    """
    w, h = size
    if t.shape[-1] == w and t.shape[-2] == h:
        return t
    a = t[0].detach().float().cpu().numpy().transpose(1, 2, 0)
    interp = cv2.INTER_AREA if (w <= a.shape[1] and h <= a.shape[0]) else cv2.INTER_CUBIC
    r = cv2.resize(a, (w, h), interpolation=interp)
    if r.ndim == 2:
        r = r[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(r.transpose(2, 0, 1)))[None]


def _parse_roi(roi: Any, width: int, height: int) -> Roi:
    try:
        x, y, w, h = (int(v) for v in roi)
    except (TypeError, ValueError):
        raise InputError(f"roi must be (x, y, width, height) integers, got {roi!r}") from None
    if w < 1 or h < 1:
        raise InputError(f"roi {roi!r} has an empty size: width and height must be >= 1")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise InputError(f"roi {roi!r} (x, y, w, h) is not inside the {width}x{height} image")
    return x, y, w, h


class BaseEnhancer:
    """Zoom logic shared by the PyTorch and ONNX Runtime back ends.

    Subclasses implement :meth:`_forward` (a (1, 3, h, w) float tensor in [0, 1] -> the model's
    ``2**n_up`` output) and set :attr:`max_zoom`.
    """

    max_zoom: int = 1
    #: pixels of real image context kept around a region of interest (so the ROI's border is
    #: enhanced as it would be in the full image rather than next to zero padding)
    roi_context: int = 32

    def _forward(self, x: torch.Tensor, n_up: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_n_up(self, n_up: int) -> None:
        """Hook for back ends that support only some pyramid depths (ONNX exports)."""

    # ---------------------------------------------------------------------------------------------
    def enhance(
        self,
        image: np.ndarray | torch.Tensor,
        zoom: float,
        roi: Roi | None = None,
        out_size: tuple[int, int] | None = None,
        tile: int | None = None,
        overlap: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Enhance ``image`` (or its region ``roi``) at ``zoom`` in ``[1, max_zoom]``.

        Args:
            image: RGB (H, W, 3) uint8/uint16/float in [0, 1], RGBA (alpha dropped, warned),
                grayscale (H, W) or (H, W, 1) (replicated to RGB, returned gray), or a float tensor
                (3, H, W) / (1, 3, H, W) in [0, 1]. See :mod:`retina_sr.inference.image`.
            zoom: any real factor from 1 to :attr:`max_zoom` (1.5, 3 and 6 work too).
            roi: optional ``(x, y, width, height)`` region in input pixels; only it is enhanced
                (with :attr:`roi_context` pixels of surrounding image as context).
            out_size: optional output ``(width, height)``; default ``round(zoom * size)`` of the
                image or ROI. Must not exceed the ``2**ceil(log2 zoom)`` model output.
            tile: tile side in input pixels for tiled inference (None: whole image at once).
            overlap: minimum tile overlap in input pixels (feathered blending, see ``tiling``).
            progress: optional ``(done, total)`` callback per tile.

        Returns:
            The enhanced image in the input's dtype and layout (numpy in -> numpy out; tensor in ->
            tensor out on the same device).
        """
        t, spec = to_tensor(image)
        y = self._enhance_tensor(t, zoom, roi, out_size, tile, overlap, progress)
        return from_tensor(y, spec)

    def window(
        self,
        image: np.ndarray | torch.Tensor,
        center: tuple[float, float],
        zoom: float,
        display_size: tuple[int, int],
        tile: int | None = None,
        overlap: int = 32,
    ) -> np.ndarray | torch.Tensor:
        """The digital zoom window: the display-size view of ``image`` around ``center`` at ``zoom``.

        The source region that maps onto a ``display_size = (width, height)`` display at ``zoom`` is
        ``ceil(width / zoom) x ceil(height / zoom)`` pixels centred on ``center = (x, y)``; it is
        shifted to stay inside the image (and the image is padded with black where it is smaller
        than the region, as outside a fundus), enhanced, and returned at exactly ``display_size``.
        """
        t, spec = to_tensor(image)
        z = check_zoom(zoom, self.max_zoom)
        try:
            dw, dh = (int(v) for v in display_size)
            cx, cy = (float(v) for v in center)
        except (TypeError, ValueError):
            raise InputError(f"display_size must be (width, height) and center (x, y), got "
                             f"{display_size!r} and {center!r}") from None
        if dw < 1 or dh < 1:
            raise InputError(f"display_size {display_size!r} must be positive")
        sw, sh = math.ceil(dw / z - 1e-9), math.ceil(dh / z - 1e-9)
        _, _, height, width = t.shape
        pad_x, pad_y = max(0, sw - width), max(0, sh - height)
        if pad_x or pad_y:  # image smaller than the region: black border around it
            t = torch.nn.functional.pad(t, (pad_x // 2, pad_x - pad_x // 2, pad_y // 2, pad_y - pad_y // 2))
            cx, cy = cx + pad_x // 2, cy + pad_y // 2
            height, width = t.shape[-2:]
        x0 = min(max(0, round(cx - sw / 2)), width - sw)
        y0 = min(max(0, round(cy - sh / 2)), height - sh)
        y = self._enhance_tensor(t, z, (x0, y0, sw, sh), (dw, dh), tile, overlap, None)
        return from_tensor(y, spec)

    # ---------------------------------------------------------------------------------------------
    def _enhance_tensor(
        self,
        t: torch.Tensor,
        zoom: float,
        roi: Roi | None,
        out_size: tuple[int, int] | None,
        tile: int | None,
        overlap: int,
        progress: Callable[[int, int], None] | None,
    ) -> torch.Tensor:
        z = check_zoom(zoom, self.max_zoom)
        n_up = levels_for_zoom(z)
        self._check_n_up(n_up)
        s = 2**n_up
        _, _, height, width = t.shape
        if roi is not None:
            x, y, w, h = _parse_roi(roi, width, height)
            c = max(0, int(self.roi_context))
            px0, py0 = max(0, x - c), max(0, y - c)
            px1, py1 = min(width, x + w + c), min(height, y + h + c)
            src = t[:, :, py0:py1, px0:px1]
        else:
            x = y = px0 = py0 = 0
            w, h = width, height
            src = t
        if tile is not None and tile < max(src.shape[-2:]):
            out = run_tiled(lambda a: self._forward(a, n_up), src, s, int(tile), int(overlap), progress)
        else:
            out = self._forward(src, n_up)
        if roi is not None:
            ox, oy = (x - px0) * s, (y - py0) * s
            out = out[:, :, oy:oy + h * s, ox:ox + w * s]
        if out_size is None:
            target = (max(1, round(w * z)), max(1, round(h * z)))
        else:
            try:
                target = (int(out_size[0]), int(out_size[1]))
            except (TypeError, ValueError, IndexError):
                raise InputError(f"out_size must be (width, height), got {out_size!r}") from None
            if target[0] < 1 or target[1] < 1 or target[0] > w * s or target[1] > h * s:
                raise InputError(
                    f"out_size {target} must be positive and at most the x{s} model output "
                    f"{(w * s, h * s)} of this {'ROI' if roi else 'image'}: raise zoom or lower out_size"
                )
        return resample(out.clamp(0.0, 1.0), target)


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
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or a torch device.
        fast: CUDA only: channels-last + bf16/fp16 autocast + ``torch.compile(mode="reduce-overhead")``
            (CUDA graphs per frame size). On CPU it warns and runs eager fp32 (use ``OnnxEnhancer``).
        compile: ``torch.compile`` the forward (None: as ``fast`` decides; False: skip it, e.g. where
            Triton is missing; True: also on CPU, where inductor compiles C++ kernels).
        amp_dtype: autocast dtype (None: as ``fast`` decides; e.g. ``torch.bfloat16`` on CPU to check
            the reduced-precision tolerance).
        channels_last: channels-last memory format (None: as ``fast`` decides).
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
    ) -> None:
        from ..runtime import pick_device

        try:
            self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        except RuntimeError:
            raise RuntimeError(f"device {device!r} requested but no CUDA device is visible: use device='auto' "
                               "or 'cpu' (--device auto/cpu)") from None
        self.meta = dict(meta)
        self.levels = int(meta["levels"])
        self.max_zoom = 2**self.levels
        cuda_fast = bool(fast) and self.device.type == "cuda"
        if fast and not cuda_fast:
            warnings.warn("fast=True needs a CUDA device; on CPU this runs eager fp32 - the CPU fast "
                          "path is ONNX Runtime (retina_sr.inference.OnnxEnhancer / --onnx)", stacklevel=2)
        self.amp_dtype = amp_dtype if amp_dtype is not None else (fast_dtype() if cuda_fast else None)
        self.channels_last = cuda_fast if channels_last is None else bool(channels_last)
        self._compile = cuda_fast if compile is None else bool(compile)
        self._compiled: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mode = self._describe()

    def _describe(self) -> str:
        """E.g. ``cpu eager fp32`` or ``cuda bfloat16+channels_last+compile(reduce-overhead)``."""
        parts = [str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        if self._compile:
            parts.append("compile(reduce-overhead)")
        return f"{self.device.type} {'eager ' if not self._compile else ''}" + "+".join(parts)

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

    def _runner(self, n_up: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self._compile:
            return lambda x: self.model(x, n_up=n_up)[-1]
        if n_up not in self._compiled:
            self._compiled[n_up] = torch.compile(LevelOutput(self.model, n_up), mode="reduce-overhead",
                                                 dynamic=False)
        return self._compiled[n_up]

    def _forward(self, x: torch.Tensor, n_up: int) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        run = self._runner(n_up)
        with torch.inference_mode():
            if self._compile and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()
            if self.amp_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.amp_dtype):
                    y = run(x)
            else:
                y = run(x)
            # a CUDA-graph output is overwritten by the next replay: copy it out (float32, NCHW)
            return y.float().contiguous().clone() if self._compile else y.float().contiguous()
