"""Resume state (``last.pt``): RNG capture/restore and atomic writes, all ``weights_only``-loadable.

``last.pt`` holds everything a killed stage needs to continue exactly where its last checkpoint
was: model, EMA, discriminator, optimisers, schedulers, python/numpy/torch RNG states, the batch
sampler position, the step, the best weights so far and the logged history. Only tensors and
Python primitives are stored, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "save_state", "load_state", "fingerprint"]

RESUME_FORMAT = "retina-sr-resume/1"

log = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) random states."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temporary file + rename), so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": RESUME_FORMAT, **state}, tmp)
    tmp.replace(path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The resume state at ``path``, or ``None`` when there is none or it is unreadable (then a
    message says so and training starts from the beginning)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file is reported and ignored
        log.warning("[train] ignoring unreadable resume state %s (%s: %s); starting over", path, type(err).__name__, err)
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        log.warning("[train] ignoring %s: not a %s resume state; starting over", path, RESUME_FORMAT)
        return None
    return state


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (the configuration a resume state belongs to)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
