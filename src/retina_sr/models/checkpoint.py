"""Model checkpoints: plain state dicts plus metadata, loadable with ``torch.load(weights_only=True)``.

Format (a dict of tensors and primitives only)::

    {"format": "retina-sr/1",
     "state_dict": {...},                 # the weights to use (EMA weights when EMA was on)
     "meta": {"model": {...ModelConfig...}, "levels": int, "scales": [1, 2, 4, 8],
              "phase": "l1", "variant": None, "step": 300, "study": "demo",
              "data_hash": "...", "ema": True, "val_psnr": 31.2, ...}}

Training-resume state (optimizer, scheduler, RNG) lives in the trainer's own ``last.pt``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig

FORMAT = "retina-sr/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format or of another architecture."""


def save_model(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model``'s weights and ``meta`` (must hold ``model``, ``levels``, ``scales``, ``phase``) atomically."""
    for key in ("model", "levels", "scales", "phase"):
        if key not in meta:
            raise ValueError(f"checkpoint meta needs {key!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model saves its plain module's keys
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: train it first (dvc repro / snakemake) or check --model")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise _load_error(path, err) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not in the {FORMAT} format (expected a dict with 'format', 'state_dict', 'meta')")
    meta = ckpt.get("meta")
    missing = [k for k in ("model", "levels") if not isinstance(meta, dict) or k not in meta]
    if not isinstance(ckpt.get("state_dict"), dict) or missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it needs a 'state_dict' dict and meta keys "
                              f"'model' and 'levels' (missing: {missing or ['state_dict']}); save it with save_model")
    return ckpt


def _load_error(path: Path, err: Exception) -> CheckpointError:
    """One line naming the file. PyTorch's own message advises loading with ``weights_only=False``,
    which runs arbitrary code from the file: never pass that on."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return CheckpointError(f"checkpoint {path} is not a retina-sr checkpoint: it holds a pickled Python object "
                               f"({found[1]}), not only tensors; save the weights with "
                               "retina_sr.models.checkpoint.save_model")
    text = text.split("WeightsUnpickler error:", 1)[-1]
    reason = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if "weights_only" in reason or not reason:
        reason = "unreadable"
    return CheckpointError(f"checkpoint {path} is corrupt or not a retina-sr checkpoint "
                           f"({type(err).__name__}: {reason}); check --model")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint was trained with and load its weights.

    Returns ``(model, meta)`` with the model in eval mode on ``device``.
    """
    from . import build_model

    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    try:
        cfg = ModelConfig.model_validate(meta["model"])
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: its architecture metadata is invalid ({err})") from None
    model = build_model(cfg, levels=int(meta["levels"]))
    load_state_strict(model, ckpt["state_dict"], str(path))
    return model.to(device).eval(), meta


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Describe how ``state`` fails to fit a module whose state dict is ``own`` (empty list: it fits)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{prefix}{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys (e.g. {[prefix + k for k in missing[:3]]})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys (e.g. {[prefix + k for k in unexpected[:3]]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    return parts


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing/unexpected key or shape mismatch is a clear error."""
    parts = state_mismatch(model.state_dict(), state)
    if parts:
        raise CheckpointError(f"{source}: architecture mismatch - " + "; ".join(parts)
                              + ". Build the model with the checkpoint's own meta['model'] settings.")
    model.load_state_dict(state)
