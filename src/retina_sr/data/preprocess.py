"""``preprocess`` stage: border crop, square resize, FOV/vessel masks, train/val/test split.

Each raw image (``data/raw/manifest.csv``) is read, its circular fundus disc detected
(:func:`retina_sr.data.fov.detect_fov`), cropped to the disc's bounding square (padding with black
where the square leaves the photograph, e.g. circles cut at the top/bottom), resized to
``data.size`` with ``INTER_AREA`` (area averaging, the alias-free choice for downscaling), and
written with its FOV mask (disc intersected with the photographed area: not the black bands beyond
a straight cut of the disc) and, when the source has one, its vessel mask (area-resized,
thresholded at 0.5) and calibre map (phantoms).

Unusable images never stop the stage: they are listed with the reason in
``data/processed/rejects.csv``. The split is by image (never by patch), seeded and deterministic.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import paths
from .fov import Circle, FovError, circle_from_mask, circle_mask, detect_fov
from .io import ImageReadError, read_image, read_mask, write_image

__all__ = [
    "PROCESSED_COLUMNS",
    "REJECT_COLUMNS",
    "TooFewImagesError",
    "crop_box",
    "crop_square",
    "preprocess_image",
    "assign_splits",
    "preprocess_dataset",
    "benchmark",
]

PROCESSED_COLUMNS = [
    "id", "source", "path", "fov_path", "vessel_path", "split", "label",
    "orig_width", "orig_height", "crop_x0", "crop_y0", "crop_x1", "crop_y1",
]
REJECT_COLUMNS = ["id", "path", "reason"]


class TooFewImagesError(RuntimeError):
    """Fewer than 3 usable images remain (one per split is needed)."""

    exit_code = 2  # an input problem (more or other images): see runtime.exit_code


@dataclass(frozen=True)
class _Job:
    id: str
    source: str
    path: str
    label: str
    vessel_mask: str
    fov_mask: str
    size: int
    out_dir: str


def crop_box(circle: Circle) -> tuple[int, int, int, int]:
    """Integer bounding square ``(x0, y0, x1, y1)`` (exclusive end) of a circle; may leave the image."""
    side = max(1, int(round(2 * circle.r)))
    x0 = int(round(circle.cx + 0.5 - side / 2))
    y0 = int(round(circle.cy + 0.5 - side / 2))
    return x0, y0, x0 + side, y0 + side


def crop_square(arr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``box`` out of ``arr`` (H, W[, C]), zero-padding what lies outside the array."""
    x0, y0, x1, y1 = box
    h, w = arr.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + arr.shape[2:], arr.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def _photographed_rows(img: np.ndarray, circle: Circle, level: int = 15) -> np.ndarray:
    """(H,) bool: the rows from the first to the last whose chord of the disc holds a pixel brighter than
    ``level``; not the black bands where a straight edge cuts the disc inside the frame (EyePACS)."""
    h, w = img.shape[:2]

    def lit(y: int) -> bool:
        half = math.sqrt(max(circle.r**2 - (y - circle.cy) ** 2, 0.0))
        x0, x1 = max(0, int(circle.cx - half)), min(w, int(circle.cx + half) + 1)
        return x1 > x0 and int(img[y, x0:x1].max()) >= level

    top = max(0, math.ceil(circle.cy - circle.r))
    first = next((y for y in range(top, h) if lit(y)), h)  # scans only the band: a few hundred rows
    last = next((y for y in range(h - 1, first - 1, -1) if lit(y)), first - 1)
    rows = np.zeros(h, bool)
    rows[first:last + 1] = True
    return rows


def preprocess_image(img: np.ndarray, size: int, circle: Circle | None = None) -> tuple[np.ndarray, np.ndarray, Circle, tuple[int, int, int, int]]:
    """Crop an RGB fundus photograph to its disc and resize to ``size``.

    Returns ``(image (size, size, 3) uint8, fov (size, size) bool, circle, crop box)``.
    Raises :class:`FovError` when no disc is found, :class:`ValueError` when the disc is smaller
    than ``size`` (it would have to be upsampled, inventing detail).
    """
    h, w = img.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"too small: {w}x{h} px is smaller than data.size={size}")
    circle = circle or detect_fov(img)
    if 2 * circle.r < size:
        raise ValueError(f"too small: the fundus disc is {2 * circle.r:.0f} px across, less than data.size={size}")
    box = crop_box(circle)
    crop = crop_square(img, box)
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    # FOV = disc within the photographed area (cut circles lose their top/bottom)
    valid = crop_square(np.broadcast_to(_photographed_rows(img, circle)[:, None], (h, w)), box).astype(np.uint8)
    valid = cv2.resize(valid, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    f = size / (box[2] - box[0])
    c_out = Circle((circle.cx + 0.5 - box[0]) * f - 0.5, (circle.cy + 0.5 - box[1]) * f - 0.5, circle.r * f)
    fov = circle_mask((size, size), c_out) & valid
    out[~fov] = 0
    return out, fov, circle, box


def _resize_mask(mask: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    crop = crop_square(mask.astype(np.float32), box)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA) >= 0.5


def _process(job: _Job) -> dict:
    """Worker: one image -> processed row dict, or ``{"reject": reason}``. Never raises."""
    out = Path(job.out_dir)
    try:
        img = read_image(job.path)
    except ImageReadError as err:
        msg = str(err).split(": ", 1)[-1]
        return {"id": job.id, "path": job.path, "reject": msg}
    except Exception as err:  # noqa: BLE001 - e.g. a file without read permission: reject, never raise
        return {"id": job.id, "path": job.path, "reject": f"not readable: {type(err).__name__}: {err}"}
    try:
        fov_circle = None
        if job.fov_mask:  # given FOV mask: the circle of its border (else detected)
            m = read_mask(job.fov_mask)
            fov_circle = circle_from_mask(m) if m.shape == img.shape[:2] else None
        image, fov, circle, box = preprocess_image(img, job.size, fov_circle)
    except (FovError, ValueError, ImageReadError) as err:
        return {"id": job.id, "path": job.path, "reject": str(err)}
    except Exception as err:  # noqa: BLE001 - one bad image never kills the stage
        return {"id": job.id, "path": job.path, "reject": f"unexpected error: {type(err).__name__}: {err}"}
    img_path = out / "images" / f"{job.id}.png"
    fov_path = out / "fov" / f"{job.id}.png"
    write_image(img_path, image)
    write_image(fov_path, fov)
    vessel_path = ""
    if job.vessel_mask:
        try:
            v = read_mask(job.vessel_mask)
            if v.shape != img.shape[:2]:
                raise ImageReadError(f"{job.vessel_mask}: mask is {v.shape[::-1]}, image is {img.shape[1::-1]}")
            vessel_path = str(out / "vessels" / f"{job.id}.png")
            write_image(vessel_path, _resize_mask(v, box, job.size) & fov)
            cal = Path(job.vessel_mask).with_name(Path(job.vessel_mask).name.replace("_vessels.png", "_calibre.npy"))
            if cal != Path(job.vessel_mask) and cal.is_file():
                c = crop_square(np.load(cal).astype(np.float32), box)
                f = job.size / (box[2] - box[0])
                c = cv2.resize(c, (job.size, job.size), interpolation=cv2.INTER_NEAREST) * f
                (out / "calibre").mkdir(parents=True, exist_ok=True)
                np.save(out / "calibre" / f"{job.id}.npy", (c * fov).astype(np.float32))
        except Exception as err:  # noqa: BLE001 - a bad mask rejects this image only, never the stage
            for written in (img_path, fov_path, Path(vessel_path) if vessel_path else None,
                            out / "calibre" / f"{job.id}.npy"):
                if written is not None:
                    written.unlink(missing_ok=True)  # no orphan outputs of a rejected image
            reason = str(err) if isinstance(err, ImageReadError) else f"{type(err).__name__}: {err}"
            return {"id": job.id, "path": job.path, "reject": f"vessel mask unusable: {reason}"}
    h, w = img.shape[:2]
    return {
        "id": job.id, "source": job.source, "path": str(img_path), "fov_path": str(fov_path),
        "vessel_path": vessel_path, "label": job.label, "orig_width": w, "orig_height": h,
        "crop_x0": box[0], "crop_y0": box[1], "crop_x1": box[2], "crop_y1": box[3],
    }


def patient_key(image_id: str, group_pattern: str | None) -> str:
    """The group an image belongs to: the first matching capture group of ``group_pattern`` (e.g. the
    patient number of EyePACS ``10_left``/``10_right`` or CHASE_DB1 ``Image_01L``/``Image_01R``), else the id."""
    if group_pattern:
        m = re.fullmatch(group_pattern, image_id)
        if m:
            key = next((g for g in m.groups() if g is not None), None)
            if key is not None:
                return key
    return image_id


def assign_splits(ids: list[str], val: float, test: float, seed: int, group_pattern: str | None = None) -> dict[str, str]:
    """Seeded split by patient (images grouped by :func:`patient_key`; by image when nothing matches):
    both eyes of one patient always land in the same split. At least one group per split (needs >= 3)."""
    groups: dict[str, list[str]] = {}
    for i in sorted(ids):
        groups.setdefault(patient_key(i, group_pattern), []).append(i)
    n = len(groups)
    if n < 3:
        raise TooFewImagesError(f"{len(ids)} usable image(s) from {n} patient(s): at least 3 patients are needed "
                                "(one per train/val/test split)")
    order = np.random.default_rng(seed).permutation(sorted(groups))
    n_test = max(1, int(round(test * n)))
    n_val = max(1, int(round(val * n)))
    while n_test + n_val > n - 1:
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    out = {}
    for rank, k in enumerate(order):
        split = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
        for image_id in groups[str(k)]:
            out[image_id] = split
    return out


def _jobs(raw: pd.DataFrame, size: int, out_dir: Path) -> list[_Job]:
    def s(v) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    return [
        _Job(s(r["id"]), s(r["source"]), s(r["path"]), s(r.get("label")), s(r.get("vessel_mask")),
             s(r.get("fov_mask")), size, str(out_dir))
        for r in raw.to_dict("records")
    ]


def _run_jobs(jobs: list[_Job], workers: int, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return [_process(j) for j in tqdm(jobs, desc="preprocess", unit="img", disable=not progress)]
    # spawn, not fork: a forked child can deadlock on OpenCV/OpenMP thread pools of the parent
    with get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        return list(tqdm(pool.imap(_process, jobs), total=len(jobs), desc="preprocess", unit="img",
                         disable=not progress))


def _worker_init() -> None:
    cv2.setNumThreads(1)


def preprocess_dataset(
    raw_manifest: str | Path = paths.RAW_MANIFEST, out_dir: str | Path = paths.PROCESSED, *,
    size: int = 512, val: float = 0.15, test: float = 0.15, seed: int = 42, workers: int = 2,
    progress: bool = True, group_pattern: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the stage: returns (processed manifest, rejects) and writes both CSVs into ``out_dir``.

    Raises :class:`TooFewImagesError` when fewer than 3 usable images remain.
    """
    raw_manifest, out_dir = Path(raw_manifest), Path(out_dir)
    if not raw_manifest.is_file():
        raise FileNotFoundError(f"{raw_manifest} not found: run the download stage first")
    raw = pd.read_csv(raw_manifest, dtype=str, keep_default_na=False)
    missing = {"id", "source", "path"} - set(raw.columns)
    if missing:
        raise ValueError(f"{raw_manifest}: missing columns {sorted(missing)}; rerun the download stage")
    for sub in ("images", "fov", "vessels", "calibre"):
        d = out_dir / sub
        if d.is_dir():  # stale outputs of a previous run must not survive
            for f in d.iterdir():
                f.unlink()
    results = _run_jobs(_jobs(raw, size, out_dir), workers, progress)
    ok = [r for r in results if "reject" not in r]
    rejects = pd.DataFrame([{"id": r["id"], "path": r["path"], "reason": r["reject"]} for r in results if "reject" in r],
                           columns=REJECT_COLUMNS)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects.to_csv(out_dir / "rejects.csv", index=False)
    if len(ok) < 3:
        lines = "; ".join(f"{r.id}: {r.reason}" for r in rejects.itertuples())
        raise TooFewImagesError(
            f"only {len(ok)} usable image(s) after preprocessing ({len(rejects)} rejected, see "
            f"{out_dir / 'rejects.csv'}): at least 3 are needed (one per split). Rejected: {lines}"
        )
    splits = assign_splits([r["id"] for r in ok], val, test, seed, group_pattern)
    for r in ok:
        r["split"] = splits[r["id"]]
    df = pd.DataFrame(ok, columns=PROCESSED_COLUMNS).sort_values("id").reset_index(drop=True)
    df.to_csv(out_dir / "manifest.csv", index=False)
    return df, rejects


def benchmark(images: str | Path, size: int = 512, workers: int = 2, limit: int | None = None) -> dict:
    """Time read + disc detection + crop + resize + write of every image in a folder (outputs discarded).

    Returns images/s in steady state (worker processes started and warmed up beforehand) and
    end-to-end (including the process start-up a stage run pays once).
    """
    import tempfile

    from .io import IMAGE_EXTENSIONS

    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    if not files:
        raise FileNotFoundError(f"no images (jpg/jpeg/png/tif) under {images}")
    workers = max(1, min(workers, len(files)))
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [_Job(p.stem, "bench", str(p), "", "", "", size, tmp) for p in files]
        t_start = time.perf_counter()
        if workers == 1:
            _worker_init()
            t0 = time.perf_counter()
            res = [_process(j) for j in jobs]
        else:
            with get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
                pool.map(_warm, range(workers))
                t0 = time.perf_counter()
                res = pool.map(_process, jobs, chunksize=1)
        t1 = time.perf_counter()
    n_ok = sum("reject" not in r for r in res)
    return {"images": len(files), "usable": n_ok, "seconds": t1 - t0, "images_per_s": len(files) / (t1 - t0),
            "images_per_s_with_startup": len(files) / (t1 - t_start), "workers": workers, "size": size}


def _warm(_: int) -> None:
    """No-op task: unpickling it makes a fresh spawn worker import this module (cv2, numpy, pandas)."""
