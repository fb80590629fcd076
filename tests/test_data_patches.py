"""Degradation model, training crops and test pairs: shapes, dtypes, determinism, blur/size."""

import numpy as np
import pandas as pd
import pytest

from retina_sr.config import params_from_dict
from retina_sr.data.io import write_image
from retina_sr.data.patches import degrade, make_patches, run_patches, sample_crops, save_patches
from retina_sr.data.phantom import generate_phantom
from retina_sr.data.preprocess import preprocess_image


def _sharpness(img: np.ndarray) -> float:
    g = img[..., 1].astype(np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


@pytest.fixture(scope="module")
def hr():
    img, _, _, _ = preprocess_image(generate_phantom(320, seed=5).image, 256)
    return img


def test_degrade_shapes_and_blur(hr):
    rng = np.random.default_rng(0)
    lr1 = degrade(hr, 1, 1.0, 0.0, rng)
    assert lr1.shape == hr.shape and lr1.dtype == np.uint8
    assert _sharpness(lr1) < _sharpness(hr)
    prev = None
    for s in (2, 4, 8):
        lr = degrade(hr, s, 0.8, 0.0, rng)
        assert lr.shape == (256 // s, 256 // s, 3) and lr.dtype == np.uint8
        # blurrier: upsampled back, it loses high frequencies against the HR image
        import cv2

        up = cv2.resize(lr, (256, 256), interpolation=cv2.INTER_CUBIC)
        err = np.abs(up.astype(float) - hr).mean()
        if prev is not None:
            assert err > prev
        prev = err
    # no blur and zoom 2 = exact 2x2 block mean
    blk = degrade(hr, 2, 0.0, 0.0, rng).astype(float)
    ref = hr.astype(float).reshape(128, 2, 128, 2, 3).mean((1, 3))
    assert np.abs(blk - ref).max() <= 1.0


def test_degrade_noise_jpeg_poisson_deterministic(hr):
    a = degrade(hr, 2, 0.8, 0.02, np.random.default_rng(1), jpeg_quality=70, poisson_peak=200)
    b = degrade(hr, 2, 0.8, 0.02, np.random.default_rng(1), jpeg_quality=70, poisson_peak=200)
    c = degrade(hr, 2, 0.8, 0.0, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 2 < np.abs(a.astype(float) - c).mean() < 20
    with pytest.raises(ValueError, match="divisible"):
        degrade(hr[:250], 4, 1.0, 0.0, np.random.default_rng(0))


def test_sample_crops_inside_fov():
    fov = np.zeros((200, 200), bool)
    fov[50:150, 50:150] = True
    for y, x in sample_crops(fov, 40, 20, 0.9, np.random.default_rng(0)):
        assert fov[y:y + 40, x:x + 40].mean() >= 0.9


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    d = tmp_path_factory.mktemp("proc")
    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        ph = generate_phantom(160, seed=20 + i)
        img, fov, _, _ = preprocess_image(ph.image, 128)
        ip, fp = d / f"p{i}.png", d / f"p{i}_fov.png"
        write_image(ip, img), write_image(fp, fov)
        vp = ""
        if i == 3:
            vp = str(d / f"p{i}_v.png")
            write_image(vp, fov & (img[..., 1] < 40))
        rows.append(dict(id=f"p{i}", source="phantom", path=str(ip), fov_path=str(fp), vessel_path=vp,
                         split=split, label="", orig_width=160, orig_height=160,
                         crop_x0=0, crop_y0=0, crop_x1=160, crop_y1=160))
    m = d / "manifest.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    return m


def _cfg(**patch):
    raw = {"data": {"size": 128, "scales": [1, 2, 4], "patches": {"crop": 32, "per_image": 3, **patch}}}
    return params_from_dict(raw).data


def test_patches_formats_and_determinism(processed, tmp_path):
    cfg = _cfg(jpeg_quality=[80, 95])
    counts = run_patches(cfg, 3, processed, tmp_path / "a")
    assert counts == {"train": 6, "val": 3, "test_x1": 1, "test_x2": 1, "test_x4": 1}
    assert not list((tmp_path / "a").glob(".*"))  # no partial file left behind
    tr = np.load(tmp_path / "a" / "train.npy")  # one record per crop, uncompressed (mmap-able)
    arrs = make_patches(pd.read_csv(processed, dtype=str, keep_default_na=False).query("split == 'train'"), cfg, 3, "train")
    assert tr.dtype.names == tuple(arrs) == ("hr", "fov", "ids", "lr_x1", "lr_x2", "lr_x4")
    for k, a in arrs.items():  # the streamed file holds exactly the in-memory crops
        assert tr[k].dtype == a.dtype and np.array_equal(tr[k], a), k
    assert isinstance(np.load(tmp_path / "a" / "val.npy", mmap_mode="r")["hr"], np.memmap)
    assert tr["hr"].shape == (6, 32, 32, 3) and tr["hr"].dtype == np.uint8
    assert tr["fov"].shape == (6, 32, 32) and tr["fov"].dtype == bool
    for s in (1, 2, 4):
        assert tr[f"lr_x{s}"].shape == (6, 32 // s, 32 // s, 3) and tr[f"lr_x{s}"].dtype == np.uint8
    assert list(tr["ids"]) == ["p0"] * 3 + ["p1"] * 3 and tr["ids"].dtype.kind == "U"
    assert (tr["fov"].mean((1, 2)) >= 0.8).all()
    te = np.load(tmp_path / "a" / "test_x4.npz")
    assert te["lr"].shape == (1, 32, 32, 3) and te["hr"].shape == (1, 128, 128, 3)
    assert te["vessels"].dtype == bool and te["has_vessels"].tolist() == [True]
    assert te["ids"].tolist() == ["p3"] and te["sources"].tolist() == ["phantom"]
    import time

    time.sleep(2.1)  # zip timestamps have 2 s resolution: the files must not carry the write time
    run_patches(cfg, 3, processed, tmp_path / "b")
    for f in ("train.npy", "val.npy", "test_x1.npz", "test_x2.npz", "test_x4.npz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f  # byte-identical
    run_patches(cfg, 4, processed, tmp_path / "c")
    assert not np.array_equal(np.load(tmp_path / "c" / "train.npy")["hr"], tr["hr"])
    (tmp_path / "c" / "train.npz").write_bytes(b"former layout")  # the stage's own stale product is replaced
    run_patches(cfg, 4, processed, tmp_path / "c")
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == ["test_x1.npz", "test_x2.npz", "test_x4.npz",
                                                                  "train.npy", "val.npy"]


def test_save_patches_round_trip_and_wrong_counts(tmp_path):
    """save_patches writes one record per crop that np.load maps; arrays of unequal length or a stream that
    does not deliver the announced count are refused and leave no file, not even a partial one."""
    from retina_sr.data.patches import _write_records

    arrs = {"hr": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3), "ids": ["a", "bcd"],
            "lr_x2": np.ones((2, 2, 2, 3), np.uint8)}
    f = save_patches(tmp_path / "x.npy", arrs)
    m = np.load(f, mmap_mode="r")
    assert isinstance(m["hr"], np.memmap) and np.array_equal(m["hr"], arrs["hr"]) and m["ids"].tolist() == ["a", "bcd"]
    with pytest.raises(ValueError, match="different numbers of crops"):
        save_patches(tmp_path / "y.npy", {**arrs, "ids": ["a"]})
    with pytest.raises(ValueError, match="wrote 2 crops, expected 3"):
        _write_records(tmp_path / "z.npy", m.dtype, 3, [arrs | {"ids": np.array(arrs["ids"])}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_lr_blurrier_than_hr_in_patches(processed):
    cfg = _cfg(color_jitter=0.0, brightness_jitter=0.0, noise_std=[0.0, 0.0])
    df = pd.read_csv(processed, dtype=str, keep_default_na=False)
    arr = make_patches(df[df["split"] == "train"], cfg, 0, "train")
    assert _sharpness(arr["lr_x1"]) < _sharpness(arr["hr"])


def test_missing_manifest_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the preprocess stage"):
        run_patches(_cfg(), 0, tmp_path / "nope.csv", tmp_path)
