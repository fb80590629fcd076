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

The stage deletes only what it wrote: a rerun removes the files and links the last run's manifest
lists, never anything else in ``data/raw``; a foreign file in the way of an output stops it
(:class:`OutputConflictError`). Input folders inside (or holding) a pipeline output are refused
before anything is touched (:func:`check_inputs`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..config import ConfigError, DataConfig, FolderSource, Params
from .io import IMAGE_EXTENSIONS, OutputConflictError, claim_output, link_file, safe_id, write_image

__all__ = ["RAW_COLUMNS", "STAGE_OUTPUTS", "OutputConflictError", "check_inputs", "download_demo",
           "download_folder", "write_manifest", "run_download"]

log = logging.getLogger(__name__)

RAW_COLUMNS = ["id", "source", "path", "width", "height", "label", "vessel_mask", "fov_mask"]
#: folders that pipeline stages (or DVC/Snakemake before them) delete and rewrite: never an input
STAGE_OUTPUTS = (paths.RAW, paths.PROCESSED, paths.PATCHES, paths.MODELS, paths.REPORTS)


def _input_dirs(cfg: DataConfig) -> list[tuple[str, str, bool]]:
    """(key, folder, searched recursively) of every input folder the configured source reads."""
    if cfg.source == "folder":
        dirs = []
        for key, fc in _folders(cfg):
            dirs += [(f"{key}.path", fc.path, True), (f"{key}.mask_dir", fc.mask_dir, False),
                     (f"{key}.fov_mask_dir", fc.fov_mask_dir, False)]
    elif cfg.source == "kaggle":
        dirs = [("data.kaggle.cache_dir", cfg.kaggle.cache_dir, False)]
    else:
        dirs = []
    return [(k, v, rec) for k, v, rec in dirs if v]


def check_inputs(cfg: DataConfig, out: str | Path = paths.RAW) -> None:
    """Raise :class:`ConfigError` if an input folder lies in (or is) a folder the pipeline deletes and
    rewrites (:data:`STAGE_OUTPUTS`, ``out``), or, searched recursively, holds one. Touches nothing."""
    outputs = [Path(out), *(o for o in STAGE_OUTPUTS if o != paths.RAW)]
    for key, value, recursive in _input_dirs(cfg):
        p = Path(value).resolve()
        for o in outputs:
            ro = o.resolve()
            if p == ro or ro in p.parents:
                where = "is" if p == ro else "lies in"
                raise ConfigError(f"{key} {value}: {where} {o}, a pipeline output that is deleted and rewritten "
                                  f"on every run; move the files to a folder outside {_names(outputs)} and set "
                                  f"{key} to it")
            if recursive and p in ro.parents:
                raise ConfigError(f"{key} {value}: holds {o}, a pipeline output that would be read as input; "
                                  f"set {key} to the folder of the photographs only")


def _names(folders) -> str:
    return ", ".join(str(f) for f in folders)


def _previous_outputs(out: Path) -> list[Path]:
    """The files the last run wrote into ``out``, as its manifest lists them (and the calibre maps
    beside phantom vessel masks). An unreadable manifest lists nothing: then nothing is deleted."""
    try:
        df = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError):  # missing, empty, not a CSV
        return []
    files = [Path(v) for col in ("path", "vessel_mask", "fov_mask") if col in df.columns for v in df[col] if v]
    return files + [f.with_name(f.name.removesuffix("_vessels.png") + "_calibre.npy")
                    for f in files if f.name.endswith("_vessels.png")]


def _clean(out: Path) -> None:
    """Remove the last run's outputs: the files and links its manifest lists, if they lie in ``out``
    or ``out/masks`` (links are removed, never followed). Nothing else is ever deleted."""
    own = {out.resolve(), (out / "masks").resolve()}
    for f in _previous_outputs(out) + [out / "manifest.csv", out / "source.json"]:
        if (f.is_symlink() or f.is_file()) and f.parent.resolve() in own:
            f.unlink()  # the manifest last: a failed rerun leaves none that lists deleted files


def _write(dst: Path, arr: np.ndarray) -> None:
    """Write an image (``.npy``: an array) through a new file beside ``dst``, which then replaces ``dst``
    only under :func:`~.io.claim_output`'s rule (same bytes: e.g. left by an interrupted run)."""
    tmp = dst.with_name(f".new.{dst.name}")  # same extension: it picks the format
    if dst.suffix == ".npy":
        np.save(tmp, arr)
    else:
        write_image(tmp, arr)
    try:
        claim_output(dst, tmp)
    except OutputConflictError:
        tmp.unlink()
        raise
    os.replace(tmp, dst)


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
        _write(p, np.ascontiguousarray(img[..., :3]))
        rows.append(dict(id="skimage_retina", source="skimage", path=str(p), width=img.shape[1],
                         height=img.shape[0], label="", vessel_mask="", fov_mask=""))
        n_ph -= 1
    ss = np.random.SeedSequence(seed)
    for i, child in enumerate(ss.spawn(n_ph)):
        ph = generate_phantom(cfg.demo.phantom_size, int(child.generate_state(1)[0]))
        pid = f"phantom_{i:03d}"
        ip, vp, fp = out / f"{pid}.png", out / "masks" / f"{pid}_vessels.png", out / "masks" / f"{pid}_fov.png"
        cp = out / "masks" / f"{pid}_calibre.npy"
        for f, a in ((ip, ph.image), (vp, ph.vessels), (fp, ph.fov), (cp, ph.calibre)):
            _write(f, a)
        rows.append(dict(id=pid, source="phantom", path=str(ip), width=ph.image.shape[1], height=ph.image.shape[0],
                         label="", vessel_mask=str(vp), fov_mask=str(fp)))
    return rows


def _distinct(files: list[Path]) -> list[Path]:
    """Each photograph once: a link and its target are one image, which must not land in two splits."""
    seen: dict[tuple[int, int], Path] = {}
    out = []
    for p in files:
        st = p.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), p)
        if first is p:
            out.append(p)
        else:
            log.warning("warning: %s: the same file as %s (a link); skipped, it is used once", p, first)
    return out


def _folders(cfg: DataConfig) -> list[tuple[str, FolderSource]]:
    """(config key, FolderSource) of ``data.folder`` and every ``data.extra_folders`` entry."""
    return [("data.folder", cfg.folder)] + [(f"data.extra_folders[{i}]", f) for i, f in enumerate(cfg.extra_folders)]


def _folder_files(key: str, fc: FolderSource) -> list[tuple[Path, FolderSource]]:
    """The images of one folder source (masks beside them left out), each with its source config."""
    src = Path(fc.path or "")
    if not src.is_dir():
        raise FileNotFoundError(f"{key}.path {src} is not a folder: set it to a folder of fundus images")
    files = sorted(p for p in src.rglob(fc.pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    mask_dir = Path(fc.mask_dir) if fc.mask_dir else src
    fov_dir = Path(fc.fov_mask_dir) if fc.fov_mask_dir else src
    # vessel and FOV masks living in the image folder must not be taken as images
    masks = {(d / pat.format(stem=p.stem)).resolve() for p in files
             for d, pat in ((mask_dir, fc.mask_pattern), (fov_dir, fc.fov_mask_pattern)) if pat}
    files = [p for p in files if p.resolve() not in masks]
    if not files:
        raise FileNotFoundError(f"no images matching '{fc.pattern}' (jpg/jpeg/png/tif) under {src}: check {key}.path/pattern")
    return [(p, fc) for p in files]


def download_folder(cfg: DataConfig, out: str | Path = paths.RAW) -> list[dict]:
    """Link/copy the images of ``data.folder`` and ``data.extra_folders`` (and matched masks) into
    ``out``; returns manifest rows.

    Images whose masks are configured but missing get an empty mask entry (with a warning), not an
    error: the image is still usable for super-resolution.
    """
    pairs = [fp for key, fc in _folders(cfg) for fp in _folder_files(key, fc)]
    origin = dict(pairs)
    files = _distinct([p for p, _ in pairs])
    if cfg.n_images and len(files) > cfg.n_images:  # deterministic subset: first n by name (before
        files = files[: cfg.n_images]                 # linking: data/raw holds only what is used)
    out = Path(out)
    rows: list[dict] = []
    seen: set[str] = set()
    for p in files:
        fc = origin[p]
        src = Path(fc.path or "")  # set: checked by DataConfig and _folder_files
        mask_dir = Path(fc.mask_dir) if fc.mask_dir else src
        fov_dir = Path(fc.fov_mask_dir) if fc.fov_mask_dir else src
        pid = safe_id(p.stem)
        while pid in seen:
            pid += "_"
        seen.add(pid)
        dst = out / f"{pid}{p.suffix.lower()}"
        link_file(p, dst)
        row: dict[str, object] = dict(id=pid, source="folder", path=str(dst), width="", height="", label="",
                                      vessel_mask="", fov_mask="")
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
                link_file(m, mdst)
                row[key] = str(mdst)
            else:
                log.warning("warning: %s %s not found for %s", key.replace("_", " "), m, p.name)
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
    check_inputs(cfg, out)
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
