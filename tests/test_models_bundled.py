"""The bundled model: registry, sha256 check on load, `retina-sr models`, zoom without --model."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from retina_sr.cli import main
from retina_sr.config import ModelConfig
from retina_sr.models import build_model, bundled
from retina_sr.models.checkpoint import CheckpointError, save_model


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    """A weights folder with one tiny bundled model, patched in for the package's own."""
    d = tmp_path / "weights"
    d.mkdir()
    cfg = ModelConfig(features=4, depth=1)
    save_model(d / "tiny.pt", build_model(cfg, 2), {"model": cfg.model_dump(), "levels": 2, "scales": [1, 2, 4], "phase": "l1"})
    sha = hashlib.sha256((d / "tiny.pt").read_bytes()).hexdigest()
    (d / "MODEL_CARD.md").write_text("# card\n")
    (d / "registry.json").write_text(json.dumps({"models": [
        {"name": "tiny", "file": "tiny.pt", "sha256": sha, "summary": "test model", "card": "MODEL_CARD.md", "default": True}]}))
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", d)
    return d


def test_default_model_is_found_and_checked(weights):
    assert bundled.default_model_name() == "tiny"
    assert bundled.bundled_checkpoint() == weights / "tiny.pt"
    with pytest.raises(CheckpointError, match="no bundled model named 'nope'"):
        bundled.bundled_checkpoint("nope")


def test_a_changed_weights_file_is_refused(weights):
    with open(weights / "tiny.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        bundled.bundled_checkpoint("tiny")


def test_models_command_lists_the_bundle(weights, capsys):
    assert main(["models", "--root", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "tiny (default)" in out and "sha256 ok" in out


def test_zoom_without_model_uses_the_bundled_default(weights, tmp_path, capsys):
    from retina_sr.data.io import read_image, write_image

    img = (np.random.default_rng(0).random((24, 32, 3)) * 200 + 20).astype(np.uint8)
    write_image(tmp_path / "eye.png", img)
    assert main(["zoom", str(tmp_path / "eye.png"), "--zoom", "2", "--quiet"]) == 0
    assert read_image(tmp_path / "eye_x2.png").shape == (48, 64, 3)


def test_zoom_without_model_and_without_bundle_says_what_to_do(tmp_path, monkeypatch, capsys):
    from retina_sr.data.io import write_image

    monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path / "empty")
    write_image(tmp_path / "eye.png", np.full((8, 8, 3), 100, np.uint8))
    assert main(["zoom", str(tmp_path / "eye.png"), "--zoom", "2"]) != 0
    assert "ships no default model: pass --model" in capsys.readouterr().err


def test_the_package_ships_a_default_model_with_its_card():
    models = bundled.bundled_models()
    if not models:
        pytest.fail("no bundled model in src/retina_sr/weights (retina-sr bundle-model writes it)")
    m = next(m for m in models if m.default)
    assert bundled.bundled_checkpoint(m.name).stat().st_size < 20 * 2**20
    assert (m.path.parent / m.card).is_file()
