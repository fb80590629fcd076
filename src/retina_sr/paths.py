"""Where every pipeline stage reads and writes (relative to the repository root).

``dvc.yaml`` and ``Snakefile`` spell the same paths out (a test checks they agree); code uses these.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"  # download: images (+ masks/) and manifest.csv
RAW_MANIFEST = RAW / "manifest.csv"
PROCESSED = DATA / "processed"  # preprocess: images/, fov/, vessels/, manifest.csv, rejects.csv
PROCESSED_MANIFEST = PROCESSED / "manifest.csv"
REJECTS = PROCESSED / "rejects.csv"
PATCHES = DATA / "patches"  # patches: train.npz, val.npz, test_x{s}.npz

MODELS = Path("models")  # models/<phase>/ and models/modified/<variant>/
REPORTS = Path("reports")  # reports/eval/...

PHASES = ("l1", "perceptual", "adversarial")


def phase_dir(phase: str, variant: str | None = None) -> Path:
    """``models/l1``, ``models/perceptual``, ``models/adversarial``, ``models/modified/<variant>``."""
    if phase == "modified":
        if not variant:
            raise ValueError("the 'modified' phase needs a variant name")
        return MODELS / "modified" / variant
    return MODELS / phase


def resume_file(phase: str, variant: str | None = None) -> Path:
    """Training-resume state of a stage: ``models/.resume/<phase>[/<variant>]/last.pt``.

    Kept outside the stage's output folder so DVC (whose ``evaluate`` stage depends on the folder
    ``models/modified``) only ever hashes the stage products, never this scratch state.
    """
    return MODELS / ".resume" / phase_dir(phase, variant).relative_to(MODELS) / "last.pt"


def patches_file(split: str, scale: int | None = None) -> Path:
    """``data/patches/train.npz`` / ``val.npz``; test pairs per zoom: ``data/patches/test_x{s}.npz``."""
    if split == "test":
        if scale is None:
            raise ValueError("test pairs are stored per zoom: give scale")
        return PATCHES / f"test_x{scale}.npz"
    return PATCHES / f"{split}.npz"
