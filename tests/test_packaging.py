"""The inference API installs without the study pipeline: `pip install retina-sr` has no DVC, Snakemake,
Hydra, MLflow or Kaggle (the `[pipeline]` extra), and importing the API and building the CLI never needs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ("dvc", "snakemake", "hydra", "omegaconf", "mlflow", "kaggle", "py7zr")


def test_pipeline_tools_are_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extra = " ".join(project["optional-dependencies"]["pipeline"])
    for dist in ("dvc", "snakemake", "hydra-core", "mlflow", "kaggle", "py7zr"):
        assert dist not in core and dist in extra, dist
    for dist in ("torch", "onnxruntime", "opencv-contrib-python-headless", "av"):
        assert dist in core, dist
    assert {"test", "pipeline", "cluster", "dev"} <= set(project["optional-dependencies"])


def test_inference_api_and_cli_work_without_the_pipeline_modules(tmp_path):
    code = f"""
import sys
for name in {PIPELINE!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as if it were not installed
import numpy as np
from retina_sr.cli import build_parser
from retina_sr.config import ModelConfig
from retina_sr.inference import Enhancer
from retina_sr.models import build_model
from retina_sr.models.checkpoint import save_model
build_parser()
cfg = ModelConfig(features=4, depth=1)
save_model(sys.argv[1], build_model(cfg, 1), {{"model": cfg.model_dump(mode="json"), "levels": 1, "scales": [1, 2], "phase": "l1"}})
out = Enhancer.from_checkpoint(sys.argv[1], device="cpu").enhance(np.zeros((16, 16, 3), np.uint8), 2)
assert out.shape == (32, 32, 3), out.shape
print("ok", sorted(k for k in sys.modules if k.split(".")[0] in {PIPELINE!r} and sys.modules[k] is not None))
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok []", r.stdout
