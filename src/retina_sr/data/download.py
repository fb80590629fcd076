"""``download`` stage: gather the study's raw fundus photographs into ``data/raw/``.

Sources (``data.source``):

- ``demo`` (offline): ``skimage.data.retina()`` (a real fundus photograph shipped with
  scikit-image) plus procedural phantoms with exact vessel/calibre/FOV ground truth
  (:mod:`retina_sr.data.phantom`).
- ``folder``: any local folder of fundus images, optional vessel and FOV masks matched by a
  ``'{stem}'`` pattern (e.g. HRF, CHASE_DB1). Files are hard-linked (copied across file systems).
- ``kaggle``: EyePACS through the official Kaggle API (:mod:`retina_sr.data.kaggle`).

Every source ends in ``data/raw/manifest.csv`` with the columns :data:`RAW_COLUMNS` (paths relative
to the working directory, i.e. the repository root) and ``data/raw/source.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..config import DataConfig, Params
from .io import IMAGE_EXTENSIONS, write_image

__all__ = ["RAW_COLUMNS", "download_demo", "download_folder", "write_manifest", "run_download"]

RAW_COLUMNS = ["id", "source", "path", "width", "height", "label", "vessel_mask", "fov_mask"]


def _clean(out: Path) -> None:
    """Remove previous image/mask outputs of the stage (not the Kaggle cache)."""
    for sub, every in ((out, False), (out / "masks", True)):  # masks/: any format (e.g. DRIVE's .gif)
        if sub.is_dir():
            for f in sub.iterdir():
                if f.is_file() and (every or f.suffix.lower() in IMAGE_EXTENSIONS + (".npy",) or f.name == "manifest.csv"):
                    f.unlink()


def download_demo(cfg: DataConfig, out: str | Path = paths.RAW, seed: int = 42) -> list[dict]:
    """Write the demo images (skimage retina + phantoms) and their masks; returns manifest rows."""
    from .phantom import generate_phantom

    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    n_ph = cfg.n_images
    if cfg.demo.include_skimage_retina:
        from skimage import data as skdata

        img = skdata.retina()
        p = out / "skimage_retina.png"
        write_image(p, np.ascontiguousarray(img[..., :3]))
        rows.append(dict(id="skimage_retina", source="skimage", path=str(p), width=img.shape[1],
                         height=img.shape[0], label="", vessel_mask="", fov_mask=""))
        n_ph -= 1
    ss = np.random.SeedSequence(seed)
    for i, child in enumerate(ss.spawn(n_ph)):
        ph = generate_phantom(cfg.demo.phantom_size, int(child.generate_state(1)[0]))
        pid = f"phantom_{i:03d}"
        ip, vp, fp = out / f"{pid}.png", out / "masks" / f"{pid}_vessels.png", out / "masks" / f"{pid}_fov.png"
        write_image(ip, ph.image)
        write_image(vp, ph.vessels)
        write_image(fp, ph.fov)
        np.save(out / "masks" / f"{pid}_calibre.npy", ph.calibre)
        rows.append(dict(id=pid, source="phantom", path=str(ip), width=ph.image.shape[1], height=ph.image.shape[0],
                         label="", vessel_mask=str(vp), fov_mask=str(fp)))
    return rows


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _safe_id(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def download_folder(cfg: DataConfig, out: str | Path = paths.RAW) -> list[dict]:
    """Link/copy the images of ``data.folder`` (and matched masks) into ``out``; returns manifest rows.

    Images whose masks are configured but missing get an empty mask entry (with a warning), not an
    error: the image is still usable for super-resolution.
    """
    fc = cfg.folder
    src = Path(fc.path or "")
    if not src.is_dir():
        raise FileNotFoundError(f"data.folder.path {src} is not a folder: set it to a folder of fundus images")
    files = sorted(p for p in src.rglob(fc.pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    mask_dir = Path(fc.mask_dir) if fc.mask_dir else src
    fov_dir = Path(fc.fov_mask_dir) if fc.fov_mask_dir else src
    # vessel and FOV masks living in the image folder must not be taken as images
    masks = {(d / pat.format(stem=p.stem)).resolve() for p in files
             for d, pat in ((mask_dir, fc.mask_pattern), (fov_dir, fc.fov_mask_pattern)) if pat}
    files = [p for p in files if p.resolve() not in masks]
    if not files:
        raise FileNotFoundError(
            f"no images matching '{fc.pattern}' (jpg/jpeg/png/tif) under {src}: check data.folder.path/pattern"
        )
    if cfg.n_images and len(files) > cfg.n_images:  # deterministic subset: first n by name (before
        files = files[: cfg.n_images]                 # linking: data/raw holds only what is used)
    out = Path(out)
    rows: list[dict] = []
    seen: set[str] = set()
    for p in files:
        pid = _safe_id(p.stem)
        while pid in seen:
            pid += "_"
        seen.add(pid)
        dst = out / f"{pid}{p.suffix.lower()}"
        _link(p, dst)
        row = dict(id=pid, source="folder", path=str(dst), width="", height="", label="", vessel_mask="", fov_mask="")
        try:
            from PIL import Image  # header only: fast

            with Image.open(p) as im:
                row["width"], row["height"] = im.size
        except Exception:  # noqa: BLE001 - unreadable images are rejected (with reason) by preprocess
            pass
        for key, d, pat in (("vessel_mask", mask_dir, fc.mask_pattern),
                            ("fov_mask", fov_dir, fc.fov_mask_pattern)):
            if not pat:
                continue
            m = d / pat.format(stem=p.stem)
            if m.is_file():
                mdst = out / "masks" / f"{pid}_{'vessels' if key == 'vessel_mask' else 'fov'}{m.suffix.lower()}"
                _link(m, mdst)
                row[key] = str(mdst)
            else:
                print(f"warning: {key.replace('_', ' ')} {m} not found for {p.name}")
        rows.append(row)
    return rows


def write_manifest(rows: list[dict], out: str | Path = paths.RAW) -> pd.DataFrame:
    """Write ``manifest.csv`` (columns :data:`RAW_COLUMNS`) into ``out``."""
    df = pd.DataFrame(rows, columns=RAW_COLUMNS).fillna("")
    Path(out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(out) / "manifest.csv", index=False)
    return df


def run_download(params: Params, out: str | Path = paths.RAW, *, kaggle_api=None) -> pd.DataFrame:
    """Run the ``download`` stage for ``params.data.source``; writes manifest.csv and source.json."""
    cfg = params.data
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    if cfg.source == "demo":
        rows = download_demo(cfg, out, params.seed)
    elif cfg.source == "folder":
        rows = download_folder(cfg, out)
    else:
        from .kaggle import download_kaggle

        rows = download_kaggle(cfg, out, params.seed, api=kaggle_api)
    df = write_manifest(rows, out)
    (out / "source.json").write_text(json.dumps({
        "study": params.study, "source": cfg.source, "n_images": len(df), "seed": params.seed,
        "params_digest": params.digest(),
        "sources": sorted(set(df["source"])),
    }, indent=2) + "\n")
    return df
