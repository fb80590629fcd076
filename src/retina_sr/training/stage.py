"""The ``train_<phase>`` stages (and ``train_<phase>@<variant>``) as the pipeline runs them."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import phases
from ..config import Params

__all__ = ["add_arguments", "train"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The train stage's own options."""
    variant_phases = "/".join(ph.name for ph in phases.PHASES if ph.variants)
    p.add_argument("--phase", required=True, choices=phases.NAMES, help="the phase to train")
    p.add_argument("--variant", default=None, help=f"entry of {phases.VARIANTS_KEY} (--phase {variant_phases} only)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def train(params: Params, root: Path, *, threads: int, phase: str, variant: str | None = None,
          no_progress: bool = False) -> str:
    """Train one phase (see :func:`.trainer.train_phase`); returns the summary line."""
    from .trainer import train_phase

    result = train_phase(params, phase, variant, root=root, progress=not no_progress)
    return (f"{result.out_dir}: best step {result.best_step}, val PSNR "
            + ", ".join(f"{k} {v:.2f} dB" for k, v in result.val_psnr.items())
            + f", {result.steps_per_s:.2f} steps/s ({threads} threads)")
