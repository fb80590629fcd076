"""``patches`` stage: training/validation crops and fixed test pairs, with the degradation model.

Degradation (:func:`degrade`), the classical model ``y = D_s(k_sigma * x) + n`` (e.g. Zhang et al.,
"Learning a single convolutional super-resolution network for multiple degradations", CVPR 2018):

1. Gaussian blur ``k_sigma`` in HR pixels; ``sigma`` is the zoom-1 value (``data.patches.blur_sigma``)
   and is multiplied by the zoom ``s`` for ``s > 1`` (a wider optical blur for a coarser sensor);
2. downscaling by ``s`` with ``INTER_AREA`` after the blur (area averaging = box filter + exact
   ``s``-fold decimation for integer ``s``, so LR pixel ``(i, j)`` is the mean of HR block
   ``[s*i:s*i+s, s*j:s*j+s]``);
3. optional Poisson (shot) noise with ``poisson_peak`` photons at 1.0, then additive Gaussian noise
   ``noise_std`` (0..1 scale), quantisation to 8 bit, optional JPEG at ``jpeg_quality``.

Zoom 1 is the same-size deblur/denoise task (blur + noise only).

Training/validation crops (Lai et al., LapSRN, CVPR 2017, section 4: random crops, flips,
rotations): random ``crop`` x ``crop`` HR crops with at least ``fov_min_fraction`` inside the FOV,
augmented (flips, 90 degree rotations, per-channel gain and global brightness jitter), with an LR input
for every zoom. Test pairs: the full preprocessed images, degraded with the mid-range sigma and noise,
seeded per image and zoom. Everything is deterministic for ``seed``, down to the bytes of the
files (:func:`savez_deterministic`, :func:`save_patches`).

Storage: the training/validation crops go to one uncompressed ``.npy`` per split holding a structured
array, one record per crop with the fields ``hr``, ``fov``, ``ids``, ``lr_x{s}``
(:func:`save_patches`). ``np.load(path, mmap_mode="r")`` maps it, so a training process reads only the
crops of its batches instead of inflating the whole split (~6 GB in the full study, per process), and
one crop's HR and LR inputs lie next to each other on disk. The stage streams the crops image by image
into the file, never holding the split in memory. The test pairs stay ``.npz`` (read whole by evaluate).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import paths
from ..config import DataConfig, PatchConfig
from .io import read_image, read_mask

__all__ = [
    "degrade", "augment", "sample_crops", "make_patches", "make_test_pairs", "run_patches", "test_degradation",
    "savez_deterministic", "save_patches", "patch_dtype",
]

_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}


def degrade(
    hr: np.ndarray, scale: int, sigma: float, noise_std: float, rng: np.random.Generator,
    jpeg_quality: int | None = None, poisson_peak: float | None = None,
) -> np.ndarray:
    """Degrade an HR ``uint8`` RGB image (H, W, 3) into its LR ``uint8`` (H/s, W/s, 3) observation.

    ``sigma`` is the zoom-1 blur in HR pixels; the applied blur is ``sigma * scale`` for ``scale > 1``
    (module docstring). ``noise_std`` is the Gaussian std on the 0..1 scale; ``poisson_peak`` the
    photon count at intensity 1.0 (None = off); ``jpeg_quality`` 1..100 (None = off).
    """
    if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"degrade expects uint8 (H, W, 3), got {hr.dtype} {hr.shape}")
    if scale < 1 or hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"image {hr.shape[1]}x{hr.shape[0]} is not divisible by zoom {scale}")
    x = hr.astype(np.float32) / 255.0
    s_eff = sigma * scale if scale > 1 else sigma
    if s_eff > 0:
        x = cv2.GaussianBlur(x, (0, 0), s_eff, borderType=cv2.BORDER_REFLECT)
    if scale > 1:
        x = cv2.resize(x, (hr.shape[1] // scale, hr.shape[0] // scale), interpolation=cv2.INTER_AREA)
    if poisson_peak is not None:
        x = rng.poisson(np.clip(x, 0, 1) * poisson_peak).astype(np.float32) / poisson_peak
    if noise_std > 0:
        x = x + rng.normal(0.0, noise_std, x.shape).astype(np.float32)
    lr = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(lr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        lr = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return lr


def test_degradation(cfg: PatchConfig) -> dict:
    """The fixed degradation of the test pairs: mid-range sigma/noise/JPEG quality, Poisson as set."""
    mid = lambda r: (r[0] + r[1]) / 2  # noqa: E731
    return {
        "sigma": mid(cfg.blur_sigma),
        "noise_std": mid(cfg.noise_std),
        "jpeg_quality": int(round(mid(cfg.jpeg_quality))) if cfg.jpeg_quality else None,
        "poisson_peak": cfg.poisson_peak,
    }


def augment(img: np.ndarray, fov: np.ndarray, rng: np.random.Generator, cfg: PatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90 degree rotation and colour/brightness gain (same geometry for the FOV mask)."""
    if cfg.flip and rng.random() < 0.5:
        img, fov = img[:, ::-1], fov[:, ::-1]
    if cfg.flip and rng.random() < 0.5:
        img, fov = img[::-1], fov[::-1]
    if cfg.rot90:
        k = int(rng.integers(4))
        img, fov = np.rot90(img, k), np.rot90(fov, k)
    gain = np.ones(3, np.float32)
    if cfg.color_jitter > 0:
        gain *= rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter, 3).astype(np.float32)
    if cfg.brightness_jitter > 0:
        gain *= np.float32(rng.uniform(1 - cfg.brightness_jitter, 1 + cfg.brightness_jitter))
    img = np.ascontiguousarray(img)
    if not np.allclose(gain, 1):
        img = np.clip(img.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    return img, np.ascontiguousarray(fov)


def sample_crops(fov: np.ndarray, crop: int, n: int, min_fraction: float, rng: np.random.Generator,
                 tries: int = 50) -> list[tuple[int, int]]:
    """``n`` top-left corners of ``crop`` x ``crop`` windows with >= ``min_fraction`` inside ``fov``.

    Uses an integral image; when no window within ``tries`` draws qualifies (tiny FOV), the best
    one drawn is used.
    """
    h, w = fov.shape
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the image {w}x{h}")
    ii = cv2.integral(fov.astype(np.uint8))
    area = float(crop * crop)
    out = []
    for _ in range(n):
        best, best_f = (0, 0), -1.0
        for _ in range(tries):
            y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            f = (ii[y + crop, x + crop] - ii[y, x + crop] - ii[y + crop, x] + ii[y, x]) / area
            if f > best_f:
                best, best_f = (y, x), f
            if f >= min_fraction:
                break
        out.append(best)
    return out


def savez_deterministic(path: str | Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal arrays give byte-identical files.

    (``numpy.savez*`` stamps every member with the current time, which would make DVC and Snakemake
    runs of the same stage differ.) The result is an ordinary ``.npz`` for ``np.load``.
    """
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _load(row) -> tuple[np.ndarray, np.ndarray]:
    return read_image(row.path), read_mask(row.fov_path)


def patch_dtype(crop: int, scales: list[int], id_chars: int) -> np.dtype:
    """The record of one training/validation crop: ``hr`` uint8 (crop, crop, 3), ``fov`` bool (crop, crop),
    ``ids`` str (``id_chars`` characters), ``lr_x{s}`` uint8 (crop/s, crop/s, 3) for every zoom ``s``."""
    return np.dtype([("hr", np.uint8, (crop, crop, 3)), ("fov", np.bool_, (crop, crop)), ("ids", f"<U{max(1, id_chars)}")]
                    + [(f"lr_x{s}", np.uint8, (crop // s, crop // s, 3)) for s in scales])


def _image_patches(rows: pd.DataFrame, cfg: DataConfig, seed: int, split: str):
    """Per image of ``rows`` (sorted by id), the dict of its crops (fields of :func:`patch_dtype`)."""
    pc = cfg.patches
    for idx, row in enumerate(rows.sort_values("id").itertuples()):
        img, fov = _load(row)
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], idx])
        hr_l, fov_l = [], []
        lr_l: dict[int, list[np.ndarray]] = {s: [] for s in cfg.scales}
        for y, x in sample_crops(fov, pc.crop, pc.per_image, pc.fov_min_fraction, rng):
            hr, f = augment(img[y:y + pc.crop, x:x + pc.crop], fov[y:y + pc.crop, x:x + pc.crop], rng, pc)
            for s in cfg.scales:
                q = int(rng.integers(pc.jpeg_quality[0], pc.jpeg_quality[1] + 1)) if pc.jpeg_quality else None
                lr_l[s].append(degrade(hr, s, float(rng.uniform(*pc.blur_sigma)), float(rng.uniform(*pc.noise_std)),
                                       rng, q, pc.poisson_peak))
            hr_l.append(hr)
            fov_l.append(f)
        if not hr_l:
            continue
        out = {"hr": np.stack(hr_l), "fov": np.stack(fov_l).astype(bool), "ids": np.array([row.id] * len(hr_l), dtype=str)}
        out.update({f"lr_x{s}": np.stack(lr_l[s]) for s in cfg.scales})
        yield out


def make_patches(rows: pd.DataFrame, cfg: DataConfig, seed: int, split: str) -> dict[str, np.ndarray]:
    """Crops and LR inputs for every image of ``rows`` (one split), in memory; the stage streams the same
    crops into a file instead (:func:`run_patches`)."""
    c = cfg.patches.crop
    parts = list(_image_patches(rows, cfg, seed, split))
    if parts:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    empty = {"hr": np.zeros((0, c, c, 3), np.uint8), "fov": np.zeros((0, c, c), bool), "ids": np.array([], dtype=str)}
    return {**empty, **{f"lr_x{s}": np.zeros((0, c // s, c // s, 3), np.uint8) for s in cfg.scales}}


def _write_records(path: Path, dtype: np.dtype, n: int, chunks) -> int:
    """Stream the dicts of ``chunks`` into a new ``.npy`` of ``n`` ``dtype`` records at ``path`` (written
    beside it, then renamed: a failed run never leaves a truncated file under the final name)."""
    names = dtype.names or ()
    tmp = path.with_name(f".{path.name}.partial")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n,))
    i, ok = 0, False
    try:
        for chunk in chunks:
            k = len(chunk[names[0]])
            if i + k > n:
                raise ValueError(f"{path}: more crops than the {n} announced")
            for name in names:
                arr[name][i:i + k] = chunk[name]
            i += k
        if i != n:
            raise ValueError(f"{path}: wrote {i} crops, expected {n}")
        arr.flush()
        ok = True
    finally:
        del arr  # unmap before the rename / removal
        if not ok:
            tmp.unlink(missing_ok=True)
    tmp.replace(path)
    return n


def save_patches(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write the crop arrays of one split (``hr``, ``fov``, ``ids``, ``lr_x{s}``, as :func:`make_patches`
    returns) as one uncompressed structured ``.npy``, one record per crop (module docstring)."""
    path = Path(path)
    arrays = {k: np.asarray(a, dtype=str) if k == "ids" else np.asarray(a) for k, a in arrays.items()}
    n = {len(a) for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"{path}: the arrays hold different numbers of crops {sorted(n)}")
    dtype = np.dtype([(k, a.dtype, a.shape[1:]) for k, a in arrays.items()])
    _write_records(path, dtype, n.pop(), [arrays])
    return path


def make_test_pairs(rows: pd.DataFrame, cfg: DataConfig, seed: int) -> dict[int, dict[str, np.ndarray]]:
    """Full-image LR/HR pairs per zoom for the test split (fixed degradation, seeded per image/zoom)."""
    deg = test_degradation(cfg.patches)
    hrs, fovs, vess, has, ids, srcs = [], [], [], [], [], []
    for row in rows.sort_values("id").itertuples():
        img, fov = _load(row)
        vp = getattr(row, "vessel_path", "")
        if isinstance(vp, str) and vp:
            v, h = read_mask(vp), True
        else:
            v, h = np.zeros(fov.shape, bool), False
        hrs.append(img)
        fovs.append(fov)
        vess.append(v)
        has.append(h)
        ids.append(row.id)
        srcs.append(str(row.source))
    out = {}
    for s in cfg.scales:
        lrs = []
        for i, hr in enumerate(hrs):
            rng = np.random.default_rng([seed, _SPLIT_CODE["test"], i, s])
            lrs.append(degrade(hr, s, deg["sigma"], deg["noise_std"], rng, deg["jpeg_quality"], deg["poisson_peak"]))
        out[s] = {
            "lr": np.stack(lrs), "hr": np.stack(hrs), "fov": np.stack(fovs).astype(bool),
            "vessels": np.stack(vess).astype(bool), "has_vessels": np.array(has, bool),
            "ids": np.array(ids, dtype=str), "sources": np.array(srcs, dtype=str),
        }
    return out


def run_patches(cfg: DataConfig, seed: int, manifest: str | Path = paths.PROCESSED_MANIFEST,
                out_dir: str | Path = paths.PATCHES) -> dict[str, int]:
    """Run the stage: write ``train.npy``, ``val.npy`` (:func:`save_patches` layout, streamed image by image)
    and ``test_x{s}.npz``; returns counts."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: run the preprocess stage first")
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for split in ("train", "val", "test"):
        if not (df["split"] == split).any():
            raise ValueError(f"{manifest}: no image in split '{split}'; rerun preprocess with more images")
    sizes = {read_image(df["path"].iloc[0]).shape[0]}
    if cfg.size not in sizes:
        raise ValueError(f"{manifest}: images are {sizes.pop()} px but data.size is {cfg.size}: rerun preprocess")
    out_dir.mkdir(parents=True, exist_ok=True)
    # this stage's own earlier products (test zooms no longer in data.scales; the former compressed layout)
    for old in [*out_dir.glob("test_x*.npz"), out_dir / "train.npz", out_dir / "val.npz"]:
        old.unlink(missing_ok=True)
    counts = {}
    for split in ("train", "val"):
        rows = df[df["split"] == split]
        dtype = patch_dtype(cfg.patches.crop, cfg.scales, int(rows["id"].str.len().max()))
        n = len(rows) * cfg.patches.per_image  # sample_crops returns per_image corners for every image
        path = out_dir / paths.patches_file(split).name
        counts[split] = _write_records(path, dtype, n, _image_patches(rows, cfg, seed, split))
    for s, arrs in make_test_pairs(df[df["split"] == "test"], cfg, seed).items():
        savez_deterministic(out_dir / paths.patches_file("test", s).name, **arrs)
        counts[f"test_x{s}"] = len(arrs["hr"])
    return counts
