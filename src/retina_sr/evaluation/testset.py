"""Loading the held-out test pairs (``data/patches/test_x{s}.npz``), phantom calibre maps and models.

File formats are those of ``docs/architecture.md``; every problem is a :class:`EvaluationInputError`
that names the file and what to do.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import paths, phases

__all__ = [
    "EvaluationInputError",
    "TestSet",
    "load_test_set",
    "ModelEntry",
    "discover_models",
    "parse_model_specs",
    "load_calibre_maps",
]

TEST_KEYS = ("lr", "hr", "fov", "vessels", "has_vessels", "ids", "sources")


class EvaluationInputError(ValueError):
    """An input of the evaluation (test pairs, checkpoint, calibre map) is missing or malformed."""


@dataclass
class TestSet:
    """Full-image test pairs for one zoom (arrays as in ``docs/architecture.md``)."""

    scale: int
    lr: np.ndarray  # uint8 (N, H/s, W/s, 3)
    hr: np.ndarray  # uint8 (N, H, W, 3)
    fov: np.ndarray  # bool (N, H, W)
    vessels: np.ndarray  # bool (N, H, W)
    has_vessels: np.ndarray  # bool (N,)
    ids: list[str]
    sources: list[str]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)


def load_test_set(path: str | Path, scale: int, max_images: int | None = None) -> TestSet:
    """Read and validate ``test_x{scale}.npz``; keep the first ``max_images`` images."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(
            f"{path} not found: run the data stages first (`dvc repro patches` or `snakemake --cores 2 patches`)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in TEST_KEYS if k not in z.files]
            if missing:
                raise EvaluationInputError(
                    f"{path}: missing arrays {missing} (expected {list(TEST_KEYS)}); re-run the patches stage"
                )
            arr = {k: z[k] for k in TEST_KEYS}
    except EvaluationInputError:
        raise
    except Exception as err:  # noqa: BLE001 - any read failure means a bad file
        raise EvaluationInputError(f"{path}: not a readable .npz file ({err}); re-run the patches stage") from None
    lr, hr = arr["lr"], arr["hr"]
    n = len(arr["ids"])
    if n == 0:
        raise EvaluationInputError(f"{path}: holds no test image; check data.split.test and data.n_images")
    if lr.dtype != np.uint8 or hr.dtype != np.uint8 or lr.ndim != 4 or hr.ndim != 4 or hr.shape[-1] != 3:
        raise EvaluationInputError(f"{path}: 'lr'/'hr' must be uint8 (N, H, W, 3), got {lr.dtype}{lr.shape} / {hr.dtype}{hr.shape}")
    h, w = hr.shape[1:3]
    if lr.shape != (n, h // scale, w // scale, 3) or hr.shape[0] != n or h % scale or w % scale:
        raise EvaluationInputError(
            f"{path}: shapes do not fit zoom x{scale}: lr {lr.shape}, hr {hr.shape}, {n} ids; re-run the patches stage"
        )
    for k in ("fov", "vessels"):
        if arr[k].shape != (n, h, w):
            raise EvaluationInputError(f"{path}: '{k}' must be bool (N, H, W) = {(n, h, w)}, got {arr[k].shape}")
    if arr["has_vessels"].shape != (n,) or len(arr["sources"]) != n:
        raise EvaluationInputError(f"{path}: 'has_vessels' and 'sources' must have one entry per image ({n})")
    keep = n if max_images is None else min(n, int(max_images))
    return TestSet(
        scale=scale,
        lr=lr[:keep],
        hr=hr[:keep],
        fov=arr["fov"][:keep].astype(bool),
        vessels=arr["vessels"][:keep].astype(bool),
        has_vessels=arr["has_vessels"][:keep].astype(bool),
        ids=[str(x) for x in arr["ids"][:keep]],
        sources=[str(x) for x in arr["sources"][:keep]],
        path=path,
    )


# ----------------------------------------------------------------------------------------- models
@dataclass
class ModelEntry:
    """A trained model to evaluate: its report name and checkpoint path."""

    name: str
    path: Path
    phase: str | None = None
    variant: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def max_scale(self) -> int:
        """Largest zoom the checkpoint supports (``2 ** levels``)."""
        return 2 ** int(self.meta["levels"])


_VARIANT_PHASES = {p.name for p in phases.PHASES if p.variants}


def _name_for(path: Path) -> str:
    parts = path.parts
    if len(parts) >= 3 and parts[-3] in _VARIANT_PHASES:
        return f"{parts[-3]}_{parts[-2]}"
    return path.parent.name or path.stem


def discover_models(root: str | Path = ".") -> list[ModelEntry]:
    """Every phase's ``models/<phase>/model.pt`` and ``models/<phase>/<variant>/model.pt`` under ``root``,
    in the order of :data:`retina_sr.phases.PHASES` (variants alphabetically)."""
    root = Path(root)
    found: list[ModelEntry] = []
    for ph in phases.PHASES:
        if ph.variants:
            for p in sorted((root / paths.MODELS / ph.name).glob("*/model.pt")):
                v = p.parent.name
                found.append(ModelEntry(name=f"{ph.name}_{v}", path=p, phase=ph.name, variant=v))
        else:
            p = root / paths.model_file(ph.name)
            if p.is_file():
                found.append(ModelEntry(name=ph.name, path=p, phase=ph.name))
    return found


def parse_model_specs(specs: list[str]) -> list[ModelEntry]:
    """``["models/l1/model.pt", "mine=/tmp/x.pt"]`` -> entries (``name=path`` sets the report name)."""
    out: list[ModelEntry] = []
    for spec in specs:
        name, sep, p = spec.partition("=")
        path = Path(p if sep else name)
        out.append(ModelEntry(name=name if sep else _name_for(path), path=path))
    names = [e.name for e in out]
    reserved = sorted(set(names) & {"input", "hr", "nearest", "bicubic", "lanczos"})
    if reserved:
        raise EvaluationInputError(f"--models: the names {reserved} are reserved for the baselines and the HR "
                                   "reference; give another name with NAME=PATH")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluationInputError(f"--models: duplicate model names {dup}; give names with NAME=PATH")
    return out


# ------------------------------------------------------------------------------------- calibre maps
def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _calibre_file(root: Path, image_id: str) -> Path | None:
    for ext in (".npy", ".png", ".tif", ".tiff"):
        p = root / paths.RAW / "masks" / f"{image_id}_calibre{ext}"
        if p.is_file():
            return p
    return None


def _read_calibre(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        cal = np.load(path, allow_pickle=False)
    else:
        cal = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if cal is None:
            raise EvaluationInputError(f"{path}: unreadable calibre map")
        if not np.issubdtype(cal.dtype, np.floating):
            raise EvaluationInputError(
                f"{path}: integer calibre map ({cal.dtype}) has no defined unit; save it as .npy (float32, "
                "vessel diameter in pixels) or a float TIFF"
            )
    cal = np.asarray(cal, dtype=np.float32)
    if cal.ndim != 2:
        raise EvaluationInputError(f"{path}: a calibre map must be 2-D (H, W), got shape {cal.shape}")
    return cal


def _crop_resize(cal: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1; may extend past the image: zero padding) and resize to ``size`` (h, w),
    scaling the calibre values (pixels) by the resize factor."""
    x0, y0, x1, y1 = box
    h, w = cal.shape
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        cal = cv2.copyMakeBorder(cal, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    crop = cal[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    if crop.size == 0:
        raise EvaluationInputError(f"empty crop box {box} for a calibre map of shape {(h, w)}")
    factor = size[1] / crop.shape[1]
    out = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return out * np.float32(factor)


def load_calibre_maps(ids: list[str], size: tuple[int, int], root: str | Path = ".") -> dict[str, np.ndarray]:
    """Calibre maps (vessel diameter in HR pixels) of the test images that have one, at ``size`` (h, w).

    The preprocess stage writes them in the preprocessed geometry to ``data/processed/calibre/<id>.npy``;
    where only a raw map ``data/raw/masks/<id>_calibre.(npy|tif)`` exists it is mapped here the same
    way, with the crop box of ``data/processed/manifest.csv`` (``crop_x0, crop_y0, crop_x1, crop_y1``).
    Images without a map are absent from the result (their calibre metric is NaN).
    """
    root = Path(root)
    out: dict[str, np.ndarray] = {}
    for i in ids:
        p = root / paths.PROCESSED / "calibre" / f"{i}.npy"
        if p.is_file():
            cal = _read_calibre(p)
            if cal.shape != tuple(size):
                raise EvaluationInputError(f"{p}: calibre map is {cal.shape}, the test images are {tuple(size)}; "
                                           "re-run the preprocess stage")
            out[i] = cal
    manifest = root / paths.PROCESSED_MANIFEST
    wanted = {i: f for i in ids if i not in out and (f := _calibre_file(root, i)) is not None}
    if not wanted:
        return out
    if not manifest.is_file():
        raise EvaluationInputError(
            f"{manifest} not found but calibre maps exist in {root / paths.RAW / 'masks'}: re-run the preprocess stage"
        )
    rows = {r["id"]: r for r in _read_csv(manifest)}
    for i, p in wanted.items():
        r = rows.get(i)
        if r is None:
            raise EvaluationInputError(f"{manifest}: no row for test image {i!r}; re-run the preprocess stage")
        try:
            box = tuple(int(float(r[k])) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
        except (KeyError, ValueError) as err:
            raise EvaluationInputError(f"{manifest}: bad crop box for {i!r} ({err})") from None
        out[i] = _crop_resize(_read_calibre(p), box, size)  # type: ignore[arg-type]
    return out
