"""The trained LapSRN as an MLflow model: a pyfunc around :class:`~retina_sr.inference.Enhancer`.

A logged model holds the retina-sr checkpoint as its artifact ``checkpoint`` (``artifacts/model.pt``,
loaded with ``torch.load(weights_only=True)``) and a two-line script naming this wrapper (MLflow's
"models from code": no pickled Python object is stored or loaded), so that

* ``retina-sr zoom photo.png --model models:/retina-sr/<version>`` finds that ``model.pt``
  (:func:`~retina_sr.inference.resolve_checkpoint`), and
* ``mlflow.pyfunc.load_model("models:/retina-sr/<version>").predict(images, params={"zoom": 2.5})``
  zooms a batch of ``(N, H, W, 3)`` uint8 RGB images (one size per call) at any zoom from 1 to the
  model's maximum, as the Enhancer does (``mlflow models serve`` serves the same).

:func:`log_enhancer_model` logs and registers one (through :func:`retina_sr.tracking.log_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc.model import PythonModel

__all__ = ["EnhancerModel", "enhancer_signature", "enhancer_input_example", "log_enhancer_model"]

#: zoom used when a caller passes none (the CLI's default too)
DEFAULT_ZOOM = 4.0


class EnhancerModel(PythonModel):
    """``predict(images, params={"zoom": z})``: ``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8 RGB in,
    ``(N, round(z*H), round(z*W), 3)`` uint8 out."""

    def load_context(self, context):
        from .enhancer import Enhancer

        self._enhancer = Enhancer.from_checkpoint(context.artifacts["checkpoint"], device="auto")

    # np.ndarray: a hint MLflow infers no schema from (the signature is explicit: enhancer_signature)
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        zoom = float((params or {}).get("zoom", DEFAULT_ZOOM))
        batch = np.asarray(model_input)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected RGB images shaped (N, H, W, 3) or (H, W, 3), got {batch.shape}")
        return np.stack([np.asarray(self._enhancer.enhance(img, zoom)) for img in batch.astype(np.uint8)])


def enhancer_signature() -> Any:
    """uint8 ``(N, H, W, 3)`` in and out, and the ``zoom`` parameter (default :data:`DEFAULT_ZOOM`)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    image = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    return ModelSignature(inputs=image, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          params=ParamSchema([ParamSpec("zoom", "double", DEFAULT_ZOOM)]))


def enhancer_input_example(size: int = 16) -> np.ndarray:
    """A small ``(1, size, size, 3)`` uint8 image: a fundus-coloured disc with a dark vessel-like line
    (MLflow stores it with the model and runs the model on it once when logging)."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2
    img = np.zeros((size, size, 3), np.uint8)
    img[disc] = (170, 80, 40)
    img[disc & (np.abs(yy - xx) <= 1)] = (110, 40, 20)
    return img[None]


def log_enhancer_model(
    checkpoint: str | Path,
    *,
    registered_model: str | None = None,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    name: str = "model",
) -> tuple[str, str | None]:
    """Log ``checkpoint`` (a retina-sr ``model.pt``) as an :class:`EnhancerModel` into the active MLflow
    run, registered as a new version of ``registered_model`` when given; returns ``(model_uri, version)``."""
    import tempfile

    from ..tracking import log_model

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to log; train it first")
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "retina_sr_model.py"
        code.write_text(MODEL_CODE)
        return log_model(code, {"checkpoint": path}, signature=enhancer_signature(),
                         input_example=(enhancer_input_example(), {"zoom": 2.0}), name=name,
                         registered_model=registered_model, tags=tags, description=description)


#: the model's code as MLflow stores it ("models from code": nothing is unpickled when it is loaded;
#: the class comes from the installed retina-sr)
MODEL_CODE = """\
import mlflow.models

from retina_sr.inference.mlflow_model import EnhancerModel

mlflow.models.set_model(EnhancerModel())
"""
