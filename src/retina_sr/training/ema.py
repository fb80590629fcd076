"""Exponential moving average (EMA) of model weights.

``shadow <- decay * shadow + (1 - decay) * weights`` after every optimiser step, for every floating
point parameter and buffer (integer buffers are copied). Validation and the saved ``model.pt`` use
the shadow weights, which are smoother than the raw iterate (Polyak & Juditsky 1992; used for SR by
e.g. Wang et al., Real-ESRGAN 2021). The shadow starts as a copy of the weights at construction
(i.e. the phase's initial weights). With ``warmup`` (default) the decay of update ``n`` (1-based)
is ``min(decay, (1 + n) / (10 + n))``, as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``,
so that short phases are not dominated by the initial weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """EMA of ``model``'s weights; ``module`` is a frozen copy holding the averaged weights."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay} (train.loop.ema_decay)")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (same architecture)."""
        self.updates += 1
        d = self.current_decay()
        own = self.module.state_dict()
        shadows, values = [], []
        for name, value in model.state_dict().items():
            shadow = own[name]
            if shadow.dtype.is_floating_point:
                shadows.append(shadow)
                values.append(value.detach().to(shadow.dtype))
            else:
                shadow.copy_(value)
        if shadows:  # shadow += (1 - d) * (value - shadow): one multi-tensor kernel, not a loop of small ones
            torch._foreach_lerp_(shadows, values, 1.0 - d)

    def current_decay(self) -> float:
        """The decay used by update number ``self.updates``."""
        if not self.warmup:
            return self.decay
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "shadow": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["shadow"])
