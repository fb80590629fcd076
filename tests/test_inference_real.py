"""Inference on a real fundus photograph (CHASE_DB1 from ../shared/data; skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retina_sr.config import ModelConfig
from retina_sr.data.io import read_image
from retina_sr.inference import Enhancer
from retina_sr.models import build_model

pytestmark = pytest.mark.shared_data


def test_real_photo_window_and_tiling(shared_data):
    photo = shared_data / "chase_db1" / "Image_01L.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} absent")
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    enh = Enhancer(build_model(cfg, levels=3), {"model": cfg.model_dump(), "levels": 3}, device="cpu")
    img = read_image(photo)
    h, w = img.shape[:2]
    view = enh.window(img, center=(w / 2, h / 2), zoom=6, display_size=(320, 180))
    assert view.shape == (180, 320, 3) and view.dtype == np.uint8
    roi = (w // 2 - 60, h // 2 - 40, 120, 80)
    a = enh.enhance(img, 2, roi=roi).astype(np.int16)
    b = enh.enhance(img, 2, roi=roi, tile=48, overlap=24).astype(np.int16)
    assert a.shape == (160, 240, 3) and np.abs(a - b).max() <= 1
