"""Models shipped inside the package (``retina_sr/weights/``), so that zooming works right after install.

``weights/registry.json`` lists each bundled checkpoint with its sha256; the file is checked on every
load, so a truncated or swapped weights file is an error, never a silently different model. Each
model has a model card (``weights/MODEL_CARD.md``): data and attribution, training parameters,
held-out metrics against bicubic, intended use and limits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..runtime import file_sha256
from .checkpoint import CheckpointError

__all__ = ["WEIGHTS_DIR", "BundledModel", "bundled_models", "bundled_checkpoint", "default_model_name", "is_bundled_name"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class BundledModel:
    name: str
    file: str
    sha256: str
    summary: str
    card: str
    default: bool = False

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


def _registry(weights_dir: Path | None = None) -> list[BundledModel]:
    reg = (weights_dir or WEIGHTS_DIR) / "registry.json"
    if not reg.is_file():
        return []
    try:
        rows = json.loads(reg.read_text())["models"]
        return [BundledModel(**row) for row in rows]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{reg}: unreadable bundled-model registry ({err}); reinstall retina-sr") from None


def bundled_models() -> list[BundledModel]:
    """Every model shipped with the package (``retina-sr models`` lists them)."""
    return _registry()


def default_model_name() -> str:
    """The model ``retina-sr zoom`` uses without ``--model``."""
    models = bundled_models()
    for m in models:
        if m.default:
            return m.name
    raise CheckpointError("this installation ships no default model: pass --model (a checkpoint, an MLflow URI "
                          "or an .onnx file), or reinstall retina-sr")


def is_bundled_name(name: str) -> bool:
    return any(m.name == name for m in bundled_models())


def bundled_checkpoint(name: str | None = None) -> Path:
    """The checked path of bundled model ``name`` (default: the default model).

    Raises :class:`CheckpointError` when the name is unknown, the file is missing or its sha256 is not
    the one recorded in the registry.
    """
    name = name or default_model_name()
    models = {m.name: m for m in bundled_models()}
    if name not in models:
        raise CheckpointError(f"no bundled model named {name!r} (bundled: {sorted(models) or 'none'}); "
                              "`retina-sr models` lists them")
    m = models[name]
    if not m.path.is_file():
        raise CheckpointError(f"{m.path}: bundled model {name!r} is missing from this installation; reinstall retina-sr")
    digest = file_sha256(m.path)
    if digest != m.sha256:
        raise CheckpointError(f"{m.path}: sha256 {digest[:12]}... does not match the registry's {m.sha256[:12]}... "
                              "(corrupt or replaced weights); reinstall retina-sr")
    return m.path
