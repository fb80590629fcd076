"""The data stages as the pipeline runs them: ``download``, ``preprocess``, ``patches``.

Every stage is ``run(params, root, *, threads) -> summary`` (:mod:`retina_sr.stages` runs it with the
one argument parser and error mapping); paths are :mod:`retina_sr.paths` under ``root``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import paths
from ..config import Params

__all__ = ["download", "preprocess", "patches"]

log = logging.getLogger(__name__)


def download(params: Params, root: Path, *, threads: int) -> str:
    """``data/raw/`` + ``manifest.csv`` + ``source.json`` from ``data.source`` (see :mod:`.download`)."""
    from .download import run_download

    t0 = time.perf_counter()
    df = run_download(params, root / paths.RAW)
    return (f"download: {len(df)} images from source '{params.data.source}' -> {paths.RAW_MANIFEST} "
            f"({time.perf_counter() - t0:.1f} s)")


def preprocess(params: Params, root: Path, *, threads: int) -> str:
    """FOV crop + resize + masks + split by patient -> ``data/processed/`` (see :mod:`.preprocess`)."""
    from .preprocess import preprocess_dataset

    d = params.data
    t0 = time.perf_counter()
    df, rejects = preprocess_dataset(root / paths.RAW_MANIFEST, root / paths.PROCESSED, size=d.size,
                                     val=d.split.val, test=d.split.test, seed=params.seed,
                                     group_pattern=d.split.group_pattern, workers=min(d.workers, threads))
    for r in rejects.itertuples():
        log.info("  rejected %s: %s", r.id, r.reason)
    counts = df["split"].value_counts().to_dict()
    return (f"preprocess: {len(df)} images ({counts}), {len(rejects)} rejected ({paths.REJECTS}), "
            f"{time.perf_counter() - t0:.1f} s")


def patches(params: Params, root: Path, *, threads: int) -> str:
    """Training crops and degraded test pairs -> ``data/patches/`` (see :mod:`.patches`)."""
    from .patches import run_patches

    t0 = time.perf_counter()
    counts = run_patches(params.data, params.seed, root / paths.PROCESSED_MANIFEST, root / paths.PATCHES)
    return f"patches: {counts} ({time.perf_counter() - t0:.1f} s)"
