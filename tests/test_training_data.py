"""Training data: patches files (layout of docs/architecture.md), the resumable sampler; helpers
``make_patches`` / ``tiny_params`` used by the other training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from retina_sr import paths
from retina_sr.config import Params, load_params
from retina_sr.data.patches import save_patches
from retina_sr.models.tensors import to_tensor
from retina_sr.training.data import BatchSampler, PatchDataError, load_patches

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"scales": [1, 2, 4], "size": 64, "patches": {"crop": 32}},
    "model": {"features": 4, "depth": 1},
    "train": {
        "loop": {"batch_size": 4, "val_every": 4, "log_every": 2, "checkpoint_every": 4, "max_val_patches": 4,
                 "ema_decay": 0.9},
        "l1": {"steps": 8},
        "perceptual": {"steps": 4, "vgg_layers": ["relu2_2"]},
        "adversarial": {"steps": 4, "warmup_steps": 2, "discriminator": {"features": 8, "n_layers": 2}},
        "modified": {"steps": 4},
    },
}


def _deep(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_params(root: Path, **overrides) -> tuple[Params, Path]:
    """params.yaml of the repo with tiny overrides written to ``root/tiny.yaml``; returns (params, file)."""
    body = _deep(TINY, overrides)
    f = root / "tiny.yaml"
    f.write_text(yaml.safe_dump(body))
    return load_params(REPO / "params.yaml", f), f


def make_patches(root: Path, n_train: int = 12, n_val: int = 4, crop: int = 32, scales=(1, 2, 4), seed: int = 0,
                 drop: str | None = None) -> None:
    """Smooth random colour patterns and their area-downscaled versions, in data/patches/{train,val}.npy."""
    rng = np.random.default_rng(seed)
    out = root / "data" / "patches"
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:crop, :crop] / crop
    for name, n in (("train", n_train), ("val", n_val)):
        hr = []
        for _ in range(n):
            f, ph = rng.uniform(1, 4, 3), rng.uniform(0, 6, 3)
            img = np.stack([0.5 + 0.4 * np.sin(f[c] * (xx + 0.5 * yy) * np.pi + ph[c]) for c in range(3)], -1)
            hr.append(np.clip(img * 255 + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8))
        hr = np.stack(hr)
        arrays = {"hr": hr, "fov": np.ones(hr.shape[:3], bool), "ids": np.array([f"im{i}" for i in range(n)])}
        for s in scales:
            arrays[f"lr_x{s}"] = hr.reshape(n, crop // s, s, crop // s, s, 3).mean((2, 4)).round().astype(np.uint8)
        if drop:
            arrays.pop(drop)
        save_patches(root / paths.patches_file(name), arrays)


def test_load_patches_reads_the_documented_layout(tmp_path):
    make_patches(tmp_path)
    ps = load_patches(tmp_path / "data/patches/train.npy", [1, 2, 4])
    assert len(ps) == 12 and ps.crop == 32 and ps.lr[4].shape == (12, 8, 8, 3) and ps.fov.dtype == bool
    assert len(load_patches(tmp_path / "data/patches/val.npy", [1, 2], limit=3)) == 3


def test_load_patches_limit_spans_every_image(tmp_path):
    """train.max_val_patches must not validate on the first image(s) only: the file stores the
    patches image by image, so the kept patches are spread evenly over it."""
    make_patches(tmp_path, n_val=12)
    full = np.load(tmp_path / "data/patches/val.npy")
    ps = load_patches(tmp_path / "data/patches/val.npy", [1, 2], limit=3)
    keep = [0, 6, 11]  # 12 patches = 3 images x 4 patches: one from each image
    assert len(ps) == 3 and np.array_equal(ps.hr, full["hr"][keep]) and np.array_equal(ps.lr[2], full["lr_x2"][keep])
    assert ps.fov.shape == (3, 32, 32) and ps.hr.flags["C_CONTIGUOUS"]
    assert len(load_patches(tmp_path / "data/patches/val.npy", [1], limit=50)) == 12


def test_load_patches_errors_name_file_and_key(tmp_path):
    with pytest.raises(PatchDataError, match="not found.*patches"):
        load_patches(tmp_path / "nope.npz", [1])
    make_patches(tmp_path, drop="lr_x2")
    with pytest.raises(PatchDataError, match=r"train.npy: missing arrays \['lr_x2'\]"):
        load_patches(tmp_path / "data/patches/train.npy", [1, 2, 4])
    make_patches(tmp_path)
    with pytest.raises(PatchDataError, match="lr_x8"):
        load_patches(tmp_path / "data/patches/train.npy", [1, 8])
    bad = tmp_path / "bad.npy"
    save_patches(bad, {"hr": np.zeros((2, 8, 8, 3), np.float32), "lr_x1": np.zeros((2, 8, 8, 3), np.uint8)})
    with pytest.raises(PatchDataError, match="'hr' must be uint8"):
        load_patches(bad, [1])
    save_patches(bad, {"hr": np.zeros((2, 8, 8, 3), np.uint8), "lr_x1": np.zeros((2, 8, 8, 3), np.uint8),
                       "fov": np.zeros((2, 8, 8), np.uint8)})
    with pytest.raises(PatchDataError, match="'fov' must be bool"):
        load_patches(bad, [1])
    np.save(bad, np.zeros((2, 8, 8, 3), np.uint8))  # a plain array, not one record per crop
    with pytest.raises(PatchDataError, match="bad.npy: expected one record per crop"):
        load_patches(bad, [1])
    (tmp_path / "junk.npy").write_text("not an npy")
    with pytest.raises(PatchDataError, match="junk.npy is not a readable .npy"):
        load_patches(tmp_path / "junk.npy", [1])


def test_load_patches_maps_the_file_instead_of_reading_it(tmp_path):
    """The training split is memory-mapped: arrays are np.memmap views of the file, a batch gathered by index
    equals the stored crops, and a write into the (copy-on-write) views never reaches the file."""
    make_patches(tmp_path, n_train=20)
    f = tmp_path / "data/patches/train.npy"
    before = f.read_bytes()
    ps = load_patches(f, [1, 2, 4])
    for a in (ps.hr, ps.fov, *ps.lr.values()):
        assert isinstance(a, np.memmap) and Path(a.filename) == f.resolve()
    stored = np.load(f)  # fully read, for comparison
    idx = np.array([17, 3, 3, 9])
    assert np.array_equal(ps.hr[idx], stored["hr"][idx]) and np.array_equal(ps.lr[4][idx], stored["lr_x4"][idx])
    assert ps.hr[idx].flags["C_CONTIGUOUS"] and not isinstance(ps.hr[idx], np.memmap)  # the batch is a copy
    ps.hr[0] = 0
    del ps
    assert f.read_bytes() == before


def test_sampler_epochs_are_permutations_and_resume_exactly():
    s = BatchSampler(10, 4, seed=3)
    draws = np.concatenate([s.next() for _ in range(5)])  # 20 = two epochs
    assert sorted(draws[:10]) == list(range(10)) and sorted(draws[10:]) == list(range(10))
    assert not np.array_equal(draws[:10], draws[10:])
    a = BatchSampler(10, 4, seed=3)
    for _ in range(3):
        a.next()
    state = a.state_dict()
    b = BatchSampler(10, 4, seed=3)
    b.load_state_dict(state)
    assert all(np.array_equal(a.next(), b.next()) for _ in range(7))
    with pytest.raises(ValueError, match="sampler state"):
        BatchSampler(11, 4, seed=3).load_state_dict(state)


def test_to_tensor_is_nchw_float_in_unit_range():
    x = np.full((2, 4, 4, 3), 255, np.uint8)
    x[0, 0, 0] = (0, 51, 255)
    t = to_tensor(x, torch.device("cpu"))
    assert t.shape == (2, 3, 4, 4) and t.dtype == torch.float32 and t.is_contiguous()
    assert t[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    one = to_tensor(x[0], "cpu", channels_last=True)  # one HWC image: a batch of one, channels-last layout
    assert one.shape == (1, 3, 4, 4) and one.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(one, t[:1])
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(x.astype(np.float32))
