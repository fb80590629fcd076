"""Border crop / FOV detection, rejects, splits, the too-few-images error."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from retina_sr.data.download import RAW_COLUMNS
from retina_sr.data.fov import detect_fov, fit_circle
from retina_sr.data.io import read_image, read_mask, write_image
from retina_sr.data.phantom import generate_phantom
from retina_sr.data.preprocess import TooFewImagesError, assign_splits, preprocess_dataset, preprocess_image

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real fundus photos) not present")


def _fundus(h: int, w: int, cx: float, cy: float, r: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    img = np.zeros((h, w, 3), np.uint8)
    img[disc] = (np.array([170, 80, 40]) + rng.normal(0, 6, (disc.sum(), 3))).clip(0, 255).astype(np.uint8)
    return img


def test_circle_fit_exact():
    t = np.linspace(0, 2 * np.pi, 100)
    c, res = fit_circle(30 + 10 * np.cos(t), 40 + 10 * np.sin(t))
    assert abs(c.cx - 30) < 1e-6 and abs(c.cy - 40) < 1e-6 and abs(c.r - 10) < 1e-6


@pytest.mark.parametrize("cut", [0, 60])
def test_detect_cut_circle(cut):
    """A disc cut at top and bottom (EyePACS style) still yields the full circle."""
    h, w, r = 300 - 2 * cut, 400, 140
    img = _fundus(h, w, 200, 150 - cut, r)
    c = detect_fov(img)
    assert abs(c.cx - 200) < 2 and abs(c.cy - (150 - cut)) < 2 and abs(c.r - r) < 2


def test_detect_dark_image_with_notch():
    img = (_fundus(300, 300, 150, 150, 130).astype(np.float32) * 0.2).astype(np.uint8)  # dim exposure
    img[10:60, 240:300] = 0  # notch cut into the disc
    c = detect_fov(img)
    assert abs(c.cx - 150) < 3 and abs(c.cy - 150) < 3 and abs(c.r - 130) < 3


def test_preprocess_image_square_and_fov():
    img = _fundus(300, 400, 210, 140, 130)
    out, fov, c, box = preprocess_image(img, 128)
    assert out.shape == (128, 128, 3) and fov.shape == (128, 128)
    assert 0.7 < fov.mean() < 0.8  # pi/4 of the square
    assert out[~fov].max() == 0 and out[fov][:, 0].mean() > 150


def _write_raw(tmp: Path, files: dict[str, Path]) -> Path:
    rows = [dict(id=k, source="test", path=str(p), width="", height="", label="", vessel_mask="", fov_mask="")
            for k, p in files.items()]
    m = tmp / "raw" / "manifest.csv"
    m.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=RAW_COLUMNS).to_csv(m, index=False)
    return m


def test_bad_inputs_are_listed_rejects(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    good = {}
    for i in range(3):
        p = d / f"good{i}.png"
        write_image(p, generate_phantom(160, seed=i).image)
        good[f"good{i}"] = p
    ok = cv2.imencode(".jpg", generate_phantom(160, seed=9).image)[1].tobytes()
    bad = {
        "corrupt": (d / "corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        "truncated": (d / "truncated.jpg", ok[: len(ok) // 3]),
        "text": (d / "text.jpg", b"this is not an image\n"),
    }
    for _, (p, b) in bad.items():
        p.write_bytes(b)
    gray = np.dstack([generate_phantom(160, seed=1).image[..., 0]] * 3)
    write_image(d / "gray.png", gray)
    write_image(d / "small.png", generate_phantom(96, seed=1).image)
    write_image(d / "black.png", np.zeros((200, 200, 3), np.uint8))
    write_image(d / "uniform.png", np.full((200, 200, 3), (120, 90, 60), np.uint8))
    write_image(d / "noise.png", np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    files = dict(good)
    files.update({k: p for k, (p, _) in bad.items()})
    files.update({k: d / f"{k}.png" for k in ("gray", "small", "black", "uniform", "noise")})
    m = _write_raw(tmp_path, files)
    df, rej = preprocess_dataset(m, tmp_path / "processed", size=128, seed=1, workers=2, progress=False)
    assert sorted(df["id"]) == ["good0", "good1", "good2"]
    assert set(df["split"]) == {"train", "val", "test"}
    reasons = dict(zip(rej["id"], rej["reason"]))
    assert set(reasons) == {"corrupt", "truncated", "text", "gray", "small", "black", "uniform", "noise"}
    assert "not a readable image" in reasons["corrupt"]
    assert "not a readable image" in reasons["text"]
    assert "grayscale" in reasons["gray"]
    assert "too small" in reasons["small"]
    assert "all black" in reasons["black"]
    assert "no fundus disc" in reasons["uniform"] and "no fundus disc" in reasons["noise"]
    assert "truncated JPEG" in reasons["truncated"]
    on_disk = pd.read_csv(tmp_path / "processed" / "rejects.csv")
    assert list(on_disk.columns) == ["id", "path", "reason"] and len(on_disk) == 8
    for r in df.itertuples():
        assert read_image(r.path).shape == (128, 128, 3)
        assert read_mask(r.fov_path).shape == (128, 128)


def test_too_few_images_error(tmp_path):
    p = tmp_path / "a.png"
    write_image(p, generate_phantom(160, seed=0).image)
    q = tmp_path / "b.png"
    write_image(q, np.zeros((200, 200, 3), np.uint8))
    m = _write_raw(tmp_path, {"a": p, "b": q})
    with pytest.raises(TooFewImagesError, match="at least 3"):
        preprocess_dataset(m, tmp_path / "processed", size=128, workers=1, progress=False)
    assert (tmp_path / "processed" / "rejects.csv").is_file()


def test_splits_deterministic_and_complete():
    ids = [f"im{i}" for i in range(20)]
    a = assign_splits(ids, 0.15, 0.15, 42)
    assert a == assign_splits(list(reversed(ids)), 0.15, 0.15, 42)
    assert sorted(a.values()).count("test") == 3 and sorted(a.values()).count("val") == 3
    s3 = assign_splits(ids[:3], 0.15, 0.15, 0)
    assert sorted(s3.values()) == ["test", "train", "val"]
    with pytest.raises(TooFewImagesError):
        assign_splits(ids[:2], 0.15, 0.15, 0)


# --------------------------------------------------------------------------- real photographs
def _small(path: Path, f: float) -> np.ndarray:
    img = read_image(path)
    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)


@needs_shared
@pytest.mark.shared_data
def test_hrf_disc_matches_fov_masks():
    """HRF: centre and radius within a few pixels of the FOV masks at 1/4 resolution."""
    f = 0.25
    imgs = sorted((SHARED / "hrf" / "images").iterdir())
    assert len(imgs) == 15
    for p in imgs:
        c = detect_fov(_small(p, f), work_size=900)
        m = read_mask(SHARED / "hrf" / "mask" / f"{p.stem}_mask.tif")
        m = cv2.resize(m.astype(np.uint8), None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
        cnt, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        pts = max(cnt, key=len)[:, 0, :]
        h, w = m.shape
        keep = ~((pts[:, 0] <= 1) | (pts[:, 1] <= 1) | (pts[:, 0] >= w - 2) | (pts[:, 1] >= h - 2))
        ref, _ = fit_circle(pts[keep, 0], pts[keep, 1])
        assert abs(c.cx - ref.cx) < 3 and abs(c.cy - ref.cy) < 3 and abs(c.r - ref.r) < 3, (p.name, c, ref)


@needs_shared
@pytest.mark.shared_data
@pytest.mark.parametrize("folder,pattern", [("chase_db1", "Image_??[LR].jpg"), ("eyepacs_sample", "*.jpeg")])
def test_plausible_disc_on_real_photos(folder, pattern):
    """Every photo: disc found, covers the bright pixels, within the image or cut only top/bottom."""
    files = sorted((SHARED / folder).glob(pattern))
    assert files
    for p in files:
        img = _small(p, 0.25 if folder == "eyepacs_sample" else 0.5)
        h, w = img.shape[:2]
        c = detect_fov(img)
        assert c.cx - c.r > -2 and c.cx + c.r < w + 2, p.name  # never cut left/right
        assert 0.3 * h < c.r < 0.75 * w, p.name
        yy, xx = np.mgrid[0:h, 0:w]
        disc = (xx - c.cx) ** 2 + (yy - c.cy) ** 2 <= (c.r + 2) ** 2
        lum = img.max(axis=2)
        assert (lum[~disc] > 25).mean() < 0.01, p.name  # nothing bright left outside the disc
        inner = (xx - c.cx) ** 2 + (yy - c.cy) ** 2 <= (0.9 * c.r) ** 2
        assert (lum[inner] > 25).mean() > 0.97, p.name  # the disc is the fundus (dark photos too)


def test_bench_preprocess_command(tmp_path, capsys):
    from retina_sr.cli import main

    for i in range(2):
        write_image(tmp_path / f"f{i}.jpg", generate_phantom(160, seed=i).image)
    assert main(["bench-preprocess", "--images", str(tmp_path), "--size", "64", "--workers", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert "2 images (2 usable)" in out and "images/s" in out
    assert main(["bench-preprocess", "--images", str(tmp_path / "nope")]) == 2


def test_bad_vessel_mask_rejects_that_image_only_and_16bit_photos_work(tmp_path):
    """An empty (0-byte) or corrupt vessel-mask file is a listed reject, not a crash of the stage
    (OpenCV asserts on an empty buffer), and leaves no orphan outputs; 16-bit PNGs are processed."""
    d = tmp_path / "in"
    d.mkdir()
    rows = []
    for i in range(5):
        ph = generate_phantom(160, seed=i)
        p = d / f"im{i}.png"
        if i == 4:  # 16-bit photograph
            cv2.imwrite(str(p), cv2.cvtColor(ph.image, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
        else:
            write_image(p, ph.image)
        v = d / f"im{i}_vessels.png"
        write_image(v, ph.vessels)
        rows.append(dict(id=f"im{i}", source="test", path=str(p), width="", height="", label="",
                         vessel_mask=str(v), fov_mask=""))
    Path(rows[0]["vessel_mask"]).write_bytes(b"")  # empty file
    Path(rows[1]["vessel_mask"]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # corrupt
    m = tmp_path / "raw" / "manifest.csv"
    m.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=RAW_COLUMNS).to_csv(m, index=False)
    out = tmp_path / "processed"
    for workers in (1, 2):
        df, rej = preprocess_dataset(m, out, size=128, seed=1, workers=workers, progress=False)
        assert sorted(df["id"]) == ["im2", "im3", "im4"]
        assert sorted(rej["id"]) == ["im0", "im1"] and rej["reason"].str.contains("vessel mask unusable").all()
        assert sorted(p.stem for p in (out / "images").iterdir()) == ["im2", "im3", "im4"]
        assert sorted(p.stem for p in (out / "fov").iterdir()) == ["im2", "im3", "im4"]
    row = df.set_index("id").loc["im4"]
    ref, _, _, _ = preprocess_image(generate_phantom(160, seed=4).image, 128)
    assert np.abs(read_image(row.path).astype(int) - ref.astype(int)).max() <= 1


def test_split_keeps_both_eyes_of_a_patient_together():
    from retina_sr.config import SplitConfig

    pattern = SplitConfig().group_pattern
    ids = [f"{i}_{eye}" for i in range(10, 30) for eye in ("left", "right")]
    ids += [f"Image_{i:02d}{eye}" for i in range(1, 8) for eye in "LR"] + ["01_h", "02_g", "phantom_000"]
    splits = assign_splits(ids, 0.15, 0.15, 42, pattern)
    assert set(splits) == set(ids) and set(splits.values()) == {"train", "val", "test"}
    for i in range(10, 30):
        assert splits[f"{i}_left"] == splits[f"{i}_right"], i
    for i in range(1, 8):
        assert splits[f"Image_{i:02d}L"] == splits[f"Image_{i:02d}R"], i
    # by image (pattern off), the eyes of some patient are separated with this seed
    by_image = assign_splits(ids, 0.15, 0.15, 42, None)
    assert any(by_image[f"{i}_left"] != by_image[f"{i}_right"] for i in range(10, 30))
    # fewer than 3 patients cannot fill three splits, however many images
    with pytest.raises(TooFewImagesError, match="3 patients"):
        assign_splits(["1_left", "1_right", "2_left", "2_right"], 0.15, 0.15, 0, pattern)


@pytest.mark.parametrize("bad", ["(unclosed", "no_group_\\d+"])
def test_split_group_pattern_is_validated(bad):
    from retina_sr.config import ConfigError, params_from_dict

    with pytest.raises(ConfigError, match="data.split.group_pattern"):
        params_from_dict({"data": {"split": {"group_pattern": bad}}})
