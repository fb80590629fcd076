"""download stage (demo, folder) and the three data stage scripts end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retina_sr.config import params_from_dict
from retina_sr.data.download import RAW_COLUMNS, run_download
from retina_sr.data.io import read_image, read_mask, write_image
from retina_sr.data.patches import run_patches
from retina_sr.data.phantom import generate_phantom
from retina_sr.data.preprocess import preprocess_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"

TINY = {"seed": 1, "data": {"source": "demo", "n_images": 4, "size": 64, "scales": [1, 2, 4], "workers": 1,
                            "demo": {"phantom_size": 128},
                            "patches": {"crop": 32, "per_image": 2}}}


def test_demo_download_manifest_and_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = params_from_dict(TINY)
    df = run_download(p, Path("data/raw"))
    assert list(df.columns) == RAW_COLUMNS and len(df) == 4
    assert df["id"].tolist() == ["skimage_retina", "phantom_000", "phantom_001", "phantom_002"]
    assert df["source"].tolist() == ["skimage", "phantom", "phantom", "phantom"]
    on_disk = pd.read_csv("data/raw/manifest.csv", dtype=str, keep_default_na=False)
    assert on_disk["path"].iloc[1] == "data/raw/phantom_000.png"  # relative to the repository root
    for r in on_disk.itertuples():
        assert read_image(r.path).shape[:2] == (int(r.height), int(r.width))
    ph = on_disk.iloc[1]
    assert read_mask(ph.vessel_mask).any() and read_mask(ph.fov_mask).mean() > 0.5
    cal = np.load("data/raw/masks/phantom_000_calibre.npy")
    assert np.array_equal(cal > 0, read_mask(ph.vessel_mask))
    src = json.loads(Path("data/raw/source.json").read_text())
    assert src == {"study": "demo", "source": "demo", "n_images": 4, "seed": 1, "params_digest": p.digest(),
                   "sources": ["phantom", "skimage"]}
    # deterministic: same seed, same phantoms
    first = read_image("data/raw/phantom_002.png")
    run_download(p, Path("data/raw"))
    assert np.array_equal(first, read_image("data/raw/phantom_002.png"))


def test_pipeline_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = params_from_dict(TINY)
    run_download(p)
    df, rej = preprocess_dataset(size=64, seed=1, workers=1, progress=False)
    assert len(df) == 4 and rej.empty and set(df["split"]) == {"train", "val", "test"}
    assert (df["vessel_path"] != "").sum() == 3  # phantoms carry vessel masks, the skimage photo none
    assert Path("data/processed/calibre/phantom_000.npy").is_file()
    counts = run_patches(p.data, p.seed)
    assert counts["train"] == 2 * (df["split"] == "train").sum()
    assert Path("data/patches/test_x4.npz").is_file()


def _phantom_folder(src: Path, n: int, mask_suffix: str, mask: str) -> Path:
    """``n`` phantom photos ``im<i>.jpg`` with their ``vessels`` or ``fov`` mask as ``im<i><mask_suffix>``."""
    for i in range(n):
        ph = generate_phantom(128, seed=i)
        write_image(src / f"im{i}.jpg", ph.image)
        write_image(src / f"im{i}{mask_suffix}", getattr(ph, mask))
    return src


def test_folder_source_with_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _phantom_folder(tmp_path / "photos", 3, "_1stHO.png", "vessels")
    p = params_from_dict({"data": {"source": "folder", "n_images": 3,
                                   "folder": {"path": str(src), "mask_pattern": "{stem}_1stHO.png"}}})
    df = run_download(p)
    assert df["id"].tolist() == ["im0", "im1", "im2"]  # masks are not taken as images
    assert all(Path(v).is_file() for v in df["vessel_mask"]) and (df["fov_mask"] == "").all()
    assert df["width"].tolist() == [128] * 3


def test_folder_fov_masks_beside_images_are_not_images(tmp_path, monkeypatch):
    """FOV masks in the image folder are neither taken as images nor counted against n_images, and
    only the selected images are linked into data/raw (a DVC output)."""
    monkeypatch.chdir(tmp_path)
    src = _phantom_folder(tmp_path / "photos", 4, "_mask.png", "fov")
    p = params_from_dict({"data": {"source": "folder", "n_images": 3,
                                   "folder": {"path": str(src), "fov_mask_pattern": "{stem}_mask.png"}}})
    df = run_download(p)
    assert df["id"].tolist() == ["im0", "im1", "im2"]
    assert all(Path(f).is_file() for f in df["fov_mask"])
    assert sorted(f.name for f in Path("data/raw").glob("*.jpg")) == ["im0.jpg", "im1.jpg", "im2.jpg"]
    # a rerun leaves no stale mask of another format behind (data/raw is a DVC output)
    Path("data/raw/masks/old_fov.gif").write_bytes(b"GIF89a")
    run_download(p)
    assert sorted(f.name for f in Path("data/raw/masks").iterdir()) == ["im0_fov.png", "im1_fov.png", "im2_fov.png"]


def test_folder_missing_is_clear(tmp_path):
    p = params_from_dict({"data": {"source": "folder", "folder": {"path": str(tmp_path / "none")}}})
    with pytest.raises(FileNotFoundError, match="data.folder.path"):
        run_download(p, tmp_path / "raw")


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("cfg,n_masks,has_fov", [
    ({"path": str(SHARED / "hrf" / "images"), "mask_dir": str(SHARED / "hrf" / "manual1"), "mask_pattern": "{stem}.tif",
      "fov_mask_dir": str(SHARED / "hrf" / "mask"), "fov_mask_pattern": "{stem}_mask.tif"}, 15, True),
    ({"path": str(SHARED / "chase_db1"), "pattern": "Image_*.jpg", "mask_pattern": "{stem}_1stHO.png"}, 28, False),
])
def test_folder_real_datasets(tmp_path, monkeypatch, cfg, n_masks, has_fov):
    monkeypatch.chdir(tmp_path)
    p = params_from_dict({"data": {"source": "folder", "n_images": 100, "folder": cfg}})
    df = run_download(p)
    assert len(df) == n_masks and (df["vessel_mask"] != "").sum() == n_masks
    assert ((df["fov_mask"] != "").sum() == n_masks) == has_fov


@pytest.mark.slow
def test_stage_scripts(tmp_path):
    """The thin workflow scripts, as DVC/Snakemake call them (separate processes)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    env_py = sys.executable
    for stage in ("download", "preprocess", "patches"):
        r = subprocess.run([env_py, str(ROOT / "workflow" / "scripts" / f"{stage}.py"), "--params", "params.yaml",
                            "--threads", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "data" / "patches" / "train.npz").is_file()
    (tmp_path / "data" / "raw" / "skimage_retina.png").write_bytes(b"junk")  # break one image
    r = subprocess.run([env_py, str(ROOT / "workflow" / "scripts" / "preprocess.py"), "--params", "params.yaml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "rejected skimage_retina" in r.stdout
