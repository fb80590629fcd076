"""download stage (demo, folder) and the three data stage scripts end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retina_sr.config import ConfigError, params_from_dict
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


def test_extra_folders_are_pooled_each_with_its_own_masks(tmp_path, monkeypatch):
    """data.extra_folders: several datasets (e.g. HRF and CHASE_DB1) in one study, each with its own
    pattern and mask layout; an extra folder inside a stage output is refused like data.folder."""
    monkeypatch.chdir(tmp_path)
    a = _phantom_folder(tmp_path / "a", 2, "_1stHO.png", "vessels")
    b = tmp_path / "b"
    for i in range(2):
        ph = generate_phantom(128, seed=10 + i)
        write_image(b / "images" / f"eye{i}.jpg", ph.image)
        write_image(b / "manual" / f"eye{i}.png", ph.vessels)
    p = params_from_dict({"data": {"source": "folder", "n_images": 10,
                                   "folder": {"path": str(a), "mask_pattern": "{stem}_1stHO.png"},
                                   "extra_folders": [{"path": str(b / "images"), "mask_dir": str(b / "manual"),
                                                      "mask_pattern": "{stem}.png"}]}})
    df = run_download(p)
    assert df["id"].tolist() == ["im0", "im1", "eye0", "eye1"]
    assert all(Path(v).is_file() for v in df["vessel_mask"])
    bad = params_from_dict({"data": {"source": "folder", "folder": {"path": str(a)},
                                     "extra_folders": [{"path": "data/raw/more"}]}})
    with pytest.raises(ConfigError, match=r"data.extra_folders\[0\].path data/raw/more: lies in data/raw"):
        run_download(bad)


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


def test_rerun_removes_its_stale_masks_of_another_format(tmp_path, monkeypatch):
    """A rerun removes what the last run wrote (its manifest lists it), e.g. DRIVE-style .gif masks
    replaced by .png ones: no stale file survives in data/raw (a DVC output)."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    src = _phantom_folder(tmp_path / "photos", 3, "_mask.png", "fov")
    (tmp_path / "gif").mkdir()
    (tmp_path / "png").mkdir()
    for i in range(3):
        (src / f"im{i}_mask.png").rename(tmp_path / "png" / f"im{i}_mask.png")
        fov = generate_phantom(128, seed=i).fov.astype(np.uint8) * 255
        Image.fromarray(fov).save(tmp_path / "gif" / f"im{i}_mask.gif")
    cfg = {"path": str(src), "fov_mask_dir": str(tmp_path / "gif"), "fov_mask_pattern": "{stem}_mask.gif"}
    run_download(params_from_dict({"data": {"source": "folder", "n_images": 3, "folder": cfg}}))
    assert sorted(f.name for f in Path("data/raw/masks").iterdir()) == ["im0_fov.gif", "im1_fov.gif", "im2_fov.gif"]
    cfg.update(fov_mask_dir=str(tmp_path / "png"), fov_mask_pattern="{stem}_mask.png")
    run_download(params_from_dict({"data": {"source": "folder", "n_images": 3, "folder": cfg}}))
    assert sorted(f.name for f in Path("data/raw/masks").iterdir()) == ["im0_fov.png", "im1_fov.png", "im2_fov.png"]


@pytest.mark.parametrize("folder", [
    {"path": "data/raw/photos"},  # inside the download stage's own output
    {"path": "data/raw"},  # equal to it: the clean-up used to delete every photograph there
    {"path": "photos", "mask_dir": "data/raw/masks", "mask_pattern": "{stem}_mask.png"},
    {"path": "models/photos"},  # inside another stage's output
    {"path": "."},  # holds every output: they would be read as photographs
])
def test_folder_inside_a_stage_output_is_refused_before_touching_anything(tmp_path, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    photo_dir = Path(folder["path"]) if folder["path"] != "." else Path("photos")
    src = _phantom_folder(photo_dir, 3, "_mask.png", "fov")
    if "mask_dir" in folder:
        Path(folder["mask_dir"]).mkdir(parents=True)
        for f in src.glob("*_mask.png"):
            f.rename(Path(folder["mask_dir"]) / f.name)
    before = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
    p = params_from_dict({"data": {"source": "folder", "n_images": 3, "folder": folder}})
    key = "mask_dir" if "mask_dir" in folder else "path"
    with pytest.raises(ConfigError, match=rf"^data\.folder\.{key} [^;]+: .*; .*data\.folder\.{key}") as err:
        run_download(p)
    assert "\n" not in str(err.value)
    assert {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()} == before  # nothing touched


def test_rerun_never_deletes_a_file_it_did_not_write(tmp_path, monkeypatch):
    """Only what the last run recorded in its manifest is removed: a photograph or note put into
    data/raw by hand survives a rerun; one in the way of an output stops the stage, intact."""
    monkeypatch.chdir(tmp_path)
    src = _phantom_folder(tmp_path / "photos", 3, "_mask.png", "fov")
    p = params_from_dict({"data": {"source": "folder", "n_images": 3,
                                   "folder": {"path": str(src), "fov_mask_pattern": "{stem}_mask.png"}}})
    run_download(p)
    mine = {Path("data/raw/my_photo.jpg"): b"\xff\xd8 mine", Path("data/raw/masks/my_mask.png"): b"mine",
            Path("data/raw/notes/readme.txt"): b"notes"}
    for f, b in mine.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b)
    run_download(p)
    run_download(params_from_dict(TINY))  # another source: the folder's outputs go, the user's files stay
    assert all(f.read_bytes() == b for f, b in mine.items())
    assert not Path("data/raw/im0.jpg").exists() and Path("data/raw/phantom_000.png").is_file()
    blocker = Path("data/raw/im1.jpg")
    blocker.write_bytes(b"someone else's photo")
    with pytest.raises(FileExistsError, match=r"^data/raw/im1\.jpg: .*; move it"):
        run_download(p)
    assert blocker.read_bytes() == b"someone else's photo"


def test_relative_symlinks_are_resolved_before_linking(tmp_path, monkeypatch):
    """A relative symlink in the source folder is linked as the photograph it points to, not as a link
    that, from data/raw, would point to a different photograph."""
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "photos" / "a", tmp_path / "photos" / "b"
    _phantom_folder(a, 2, "_vessels.png", "vessels")
    _phantom_folder(b, 1, "_vessels.png", "vessels")
    (a / "im9.jpg").symlink_to(Path("..") / "b" / "im0.jpg")  # photos/a/im9.jpg -> photos/b/im0.jpg
    (a / "im9_vessels.png").symlink_to(Path("..") / "b" / "im0_vessels.png")
    (a / "im1_copy.jpg").symlink_to("im1.jpg")  # one photograph under two names: used once
    Path("data/b").mkdir(parents=True)  # what '../b/im0.jpg' means from data/raw: another photograph
    write_image("data/b/im0.jpg", generate_phantom(128, seed=7).image)
    write_image("data/b/im0_vessels.png", generate_phantom(128, seed=7).vessels)
    p = params_from_dict({"data": {"source": "folder", "n_images": 3,
                                   "folder": {"path": str(a), "mask_pattern": "{stem}_vessels.png"}}})
    df = run_download(p).set_index("id")
    assert sorted(df.index) == ["im0", "im1", "im9"]
    for col, f in (("path", "im0.jpg"), ("vessel_mask", "im0_vessels.png")):
        linked = Path(df.loc["im9", col])
        assert not linked.is_symlink() and linked.read_bytes() == (b / f).read_bytes(), col


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
    assert (tmp_path / "data" / "patches" / "train.npy").is_file()
    (tmp_path / "data" / "raw" / "skimage_retina.png").write_bytes(b"junk")  # break one image
    r = subprocess.run([env_py, str(ROOT / "workflow" / "scripts" / "preprocess.py"), "--params", "params.yaml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "rejected skimage_retina" in r.stderr  # stage messages: logging on stderr


def test_rerun_after_an_interrupted_run_replaces_only_identical_files(tmp_path, monkeypatch):
    """No manifest (a run stopped before writing it): outputs with the bytes the stage would write are
    replaced; a different file under an output's name stops the stage and is kept."""
    monkeypatch.chdir(tmp_path)
    p = params_from_dict(TINY)
    run_download(p)
    Path("data/raw/manifest.csv").unlink()
    assert len(run_download(p)) == 4
    Path("data/raw/manifest.csv").unlink()
    Path("data/raw/phantom_001.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"^data/raw/phantom_001\.png: .*; move it"):
        run_download(p)
    assert Path("data/raw/phantom_001.png").read_bytes() == b"mine"
    assert not list(Path("data/raw").rglob(".new.*"))  # no temporary file left behind
