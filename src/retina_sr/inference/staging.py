"""Host -> device upload of uint8 crops through reused pinned (page-locked) buffers.

A copy from pageable host memory to a GPU is synchronous and goes through a driver bounce buffer;
from pinned memory it is a direct DMA that can run asynchronously (``non_blocking=True``). Pinning
is expensive (``cudaHostAlloc``), so one buffer per crop shape is kept and reused; before a buffer
is overwritten, the event recorded after its previous copy is waited on, so a frame is never
overwritten while the GPU still reads it. :class:`~retina_sr.inference.base.BaseEnhancer` stages
only for CUDA devices (on a CPU the crop is used where it is).

The reuse and fencing logic does not depend on CUDA: ``HostStaging(device="cpu", pin=False)`` runs
it with plain host buffers (tests), with a fence factory of the caller's choice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["HostStaging"]


class _NoFence:
    """Stand-in for ``torch.cuda.Event`` where copies are synchronous."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class HostStaging:
    """Uploads host tensors to ``device`` through reused, optionally pinned, staging buffers.

    Args:
        device: the target device.
        pin: page-locked buffers and asynchronous copies (default: when ``device`` is CUDA).
        max_buffers: staging buffers kept (least recently used shapes are dropped).
        fence: factory of objects with ``record()`` and ``synchronize()`` (default: a CUDA event on
            CUDA, a no-op elsewhere).
    """

    def __init__(self, device: torch.device | str, pin: bool | None = None, max_buffers: int = 4,
                 fence: Callable[[], Any] | None = None) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.pin = cuda if pin is None else bool(pin)
        self.max_buffers = int(max_buffers)
        self._fence = fence or (torch.cuda.Event if cuda else _NoFence)
        self._buffers: OrderedDict[tuple, tuple[torch.Tensor, Any]] = OrderedDict()
        self.allocations = 0  # buffers created so far (a steady stream of one shape: 1)

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, Any]:
        key = (shape, dtype)
        if key in self._buffers:
            self._buffers.move_to_end(key)
            return self._buffers[key]
        buf = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        entry = (buf, self._fence())
        self._buffers[key] = entry
        self.allocations += 1
        while len(self._buffers) > self.max_buffers:
            _, (_, old_fence) = self._buffers.popitem(last=False)
            old_fence.synchronize()  # its last copy must finish before the memory is released
        return entry

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` (any strides, on the CPU) as a tensor on :attr:`device`.

        On a CPU device (tests of this logic) the result is the staging buffer itself, valid until the
        next upload of that shape; callers on the CPU do not stage at all.
        """
        buf, fence = self._buffer(tuple(host.shape), host.dtype)
        fence.synchronize()  # the previous upload from this buffer has finished reading it
        buf.copy_(host)
        out = buf.to(self.device, non_blocking=self.pin)
        fence.record()
        return out
