"""MLflow models, images and datasets: a trained checkpoint logged as an MLflow pyfunc model with a
signature and an input example, registered, and loaded back by `retina-sr zoom --model models:/...`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from retina_sr import tracking
from retina_sr.config import ModelConfig, Params
from retina_sr.models import build_model
from retina_sr.models.checkpoint import save_model

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/reg.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    path = tmp_path / "models" / "l1" / "model.pt"
    save_model(path, build_model(cfg, levels=2), {"model": cfg.model_dump(), "levels": 2, "scales": [1, 2, 4],
                                                  "phase": "l1"})
    return path


def _rgb(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([(yy * 7) % 256, (xx * 5) % 256, ((yy + xx) * 3) % 256], -1).astype(np.uint8)


def test_registered_model_round_trip_through_zoom(tmp_path, store, ckpt, capsys):
    """Log + register a tiny model, then `retina-sr zoom --model models:/retina-sr/1` (the resolution
    code zoom uses) and MLflow's own pyfunc loader give the checkpoint's exact output."""
    import mlflow

    from retina_sr.cli import main
    from retina_sr.data.io import read_image, write_image
    from retina_sr.inference import Enhancer, resolve_checkpoint
    from retina_sr.inference.mlflow_model import log_enhancer_model

    with tracking.start_run(Params(), "retina-sr", "train_l1", {"phase": "l1"}) as run:
        uri, version = log_enhancer_model(ckpt, registered_model="retina-sr",
                                          tags={"phase": "l1", "variant": None, "study": "demo"},
                                          description="l1 model of the demo study")
    assert version == "1" and uri.startswith("models:/")
    client = mlflow.MlflowClient(store)
    mv = client.get_model_version("retina-sr", "1")
    assert mv.run_id == run.info.run_id and mv.tags == {"phase": "l1", "study": "demo"}
    assert mv.description == "l1 model of the demo study"
    # a native MLflow model: pyfunc flavour, explicit signature with the zoom parameter, an input example
    info = mlflow.models.get_model_info("models:/retina-sr/1")
    assert "python_function" in info.flavors
    sig = info.signature.to_dict()
    assert json.loads(sig["inputs"])[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, -1, -1, 3]}
    assert json.loads(sig["params"])[0]["name"] == "zoom"
    assert info.saved_input_example_info is not None

    local = resolve_checkpoint("models:/retina-sr/1", store)
    assert local.name == "model.pt" and local.read_bytes() == ckpt.read_bytes()
    src = tmp_path / "eye.png"
    img = _rgb(12, 10)
    write_image(src, img)
    out = tmp_path / "eye_x2.png"
    assert main(["zoom", str(src), "--model", "models:/retina-sr/1", "--zoom", "2", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    expected = Enhancer.from_checkpoint(ckpt, device="cpu").enhance(img, 2)
    np.testing.assert_array_equal(read_image(out), expected)

    pyfunc = mlflow.pyfunc.load_model("models:/retina-sr/1")
    pred = pyfunc.predict(img[None], params={"zoom": 2.0})
    assert pred.shape == (1, 24, 20, 3) and pred.dtype == np.uint8
    # the served model picks its device as the Enhancer's "auto" does (CUDA when present)
    np.testing.assert_array_equal(pred[0], Enhancer.from_checkpoint(ckpt, device="auto").enhance(img, 2))
    assert pyfunc.predict(img[None], params={"zoom": 1.5}).shape == (1, 18, 15, 3)


def test_second_model_is_the_next_version_and_unregistered_logging_works(store, ckpt):
    from retina_sr.inference.mlflow_model import log_enhancer_model

    with tracking.start_run(Params(), "retina-sr", "train_l1"):
        assert log_enhancer_model(ckpt, registered_model="retina-sr")[1] == "1"
        assert log_enhancer_model(ckpt, registered_model="retina-sr", name="again")[1] == "2"
        uri, version = log_enhancer_model(ckpt, name="plain")
    assert version is None and uri.startswith("models:/")


def test_log_model_needs_a_run_and_a_checkpoint(tmp_path, store, ckpt):
    from retina_sr.inference.mlflow_model import log_enhancer_model

    with pytest.raises(FileNotFoundError, match="no checkpoint to log"):
        log_enhancer_model(tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_enhancer_model(ckpt)


def test_unknown_registered_version_is_one_clear_error(tmp_path, store, capsys):
    from retina_sr.cli import main
    from retina_sr.data.io import write_image

    tracking.init_store(store)
    src = tmp_path / "eye.png"
    write_image(src, _rgb(8, 8))
    capsys.readouterr()
    assert main(["zoom", str(src), "--model", "models:/retina-sr/7", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("retina-sr zoom: error:") and "models:/retina-sr/7" in err[-1], err
    assert not (tmp_path / "eye_x4.png").exists()


def test_log_image_steps_and_dataset_inputs(tmp_path, store):
    """Validation images per step (the UI's step slider) and the data set as a run input."""
    import mlflow
    import pandas as pd

    manifest = tmp_path / "manifest.csv"
    table = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "train", "val"]})
    table.to_csv(manifest, index=False)
    with tracking.start_run(Params(), "retina-sr", "train_l1") as run:
        for step in (10, 20):
            tracking.log_image("validation", np.full((6, 8, 3), step, np.uint8), step)
        tracking.log_dataset(manifest, "processed", "training", digest="abc123", table=table)
        tracking.log_dataset(tmp_path, "test_x4", "evaluation", digest="def456")
        with pytest.raises(ValueError, match="uint8"):
            tracking.log_image("validation", np.zeros((4, 4, 3), np.float32), 30)
    client = mlflow.MlflowClient(store)
    r = client.get_run(run.info.run_id)
    files = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    # MLflow's layout of step images (what the UI's image slider reads): images/<key>+step+<n>+...
    steps = sorted(int(f.split("+step+")[1].split("+")[0]) for f in files
                   if f.startswith("images/validation+step+") and f.endswith(".png") and "compressed" not in f)
    assert steps == [10, 20], files
    inputs = {d.dataset.name: d for d in r.inputs.dataset_inputs}
    assert set(inputs) == {"processed", "test_x4"}
    assert inputs["processed"].dataset.digest == "abc123"
    assert json.loads(inputs["processed"].dataset.profile)["num_rows"] == 3
    assert json.loads(inputs["processed"].dataset.source)["uri"] == str(manifest.resolve())
    assert {t.key: t.value for t in inputs["test_x4"].tags}["mlflow.data.context"] == "evaluation"
