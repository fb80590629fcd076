"""Where every pipeline stage reads and writes (relative to the repository root).

``Snakefile`` derives its paths from these; ``dvc.yaml`` spells them out (``tests/test_orchestration.py``
checks that both agree).
"""

from __future__ import annotations

from pathlib import Path

from . import phases

DATA = Path("data")
RAW = DATA / "raw"  # download: images (+ masks/) and manifest.csv
RAW_MANIFEST = RAW / "manifest.csv"
PROCESSED = DATA / "processed"  # preprocess: images/, fov/, vessels/, manifest.csv, rejects.csv
PROCESSED_MANIFEST = PROCESSED / "manifest.csv"
REJECTS = PROCESSED / "rejects.csv"
PATCHES = DATA / "patches"  # patches: train.npy, val.npy (memory-mappable), test_x{s}.npz

MODELS = Path("models")  # models/<phase>/ and models/modified/<variant>/
REPORTS = Path("reports")  # reports/eval/...


def phase_dir(phase: str, variant: str | None = None) -> Path:
    """``models/<phase>`` (``models/l1`` ...), ``models/<phase>/<variant>`` for a variant phase
    (``models/modified/shared``); the phases are :data:`retina_sr.phases.PHASES`."""
    p = phases.get(phase)
    if p.variants:
        if not variant:
            raise ValueError(f"the '{p.name}' phase needs a variant name")
        return MODELS / p.name / variant
    if variant:
        raise ValueError(f"the '{p.name}' phase has no variants (got {variant!r})")
    return MODELS / p.name


def model_file(phase: str, variant: str | None = None) -> Path:
    """The stage's product: ``models/<phase>[/<variant>]/model.pt`` (also ``metrics.json``, ``plots.csv`` beside it)."""
    return phase_dir(phase, variant) / "model.pt"


def resume_file(phase: str, variant: str | None = None) -> Path:
    """Training-resume state of a stage: ``models/.resume/<phase>[/<variant>]/last.pt``.

    Kept outside the stage's output folder so DVC (whose ``evaluate`` stage depends on the folder
    ``models/modified``) only ever hashes the stage products, never this scratch state.
    """
    return MODELS / ".resume" / phase_dir(phase, variant).relative_to(MODELS) / "last.pt"


def patches_file(split: str, scale: int | None = None) -> Path:
    """``data/patches/train.npy`` / ``val.npy`` (uncompressed, one record per crop, for ``np.load(mmap_mode="r")``:
    :func:`retina_sr.data.patches.save_patches`); test pairs per zoom: ``data/patches/test_x{s}.npz``."""
    if split == "test":
        if scale is None:
            raise ValueError("test pairs are stored per zoom: give scale")
        return PATCHES / f"test_x{scale}.npz"
    return PATCHES / f"{split}.npy"
