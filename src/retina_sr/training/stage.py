"""The ``train_<phase>`` stages (and ``train_<phase>@<variant>``) as the pipeline runs them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .. import phases
from ..config import Params

__all__ = ["add_arguments", "train", "torchrun_command"]

log = logging.getLogger(__name__)


def torchrun_command(devices: int, argv: list[str] | None = None) -> list[str]:
    """The command that re-runs this very process under ``torchrun`` with ``devices`` processes.

    Started as ``python -m <module> ...`` it keeps ``-m <module>``; started as a script (a workflow script or
    the ``retina-sr`` entry point) it runs that file. ``--standalone`` picks a free rendezvous port, so training
    jobs running side by side do not collide."""
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    target = ["-m", spec.name] if spec is not None and spec.name else [argv[0]]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
            *target, *argv[1:]]


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

    devices = params.train.loop.devices
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        # train.loop.devices > 1: DVC and Snakemake run the same command as for one device; the stage restarts
        # itself under torchrun (one process per device, see training/distributed.py)
        cmd = torchrun_command(devices)
        log.info("train.loop.devices=%d: restarting under torchrun: %s", devices, " ".join(cmd))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, cmd)
    result = train_phase(params, phase, variant, root=root, progress=not no_progress)
    if not result.val_psnr:  # a data-parallel rank other than 0 (torchrun): rank 0 validates and writes
        return (f"data-parallel rank {result.metrics.get('rank')}: {result.metrics.get('steps')} steps done "
                f"(rank 0 writes {result.out_dir}; {threads} threads)")
    return (f"{result.out_dir}: best step {result.best_step}, val PSNR "
            + ", ".join(f"{k} {v:.2f} dB" for k, v in result.val_psnr.items())
            + f", {result.steps_per_s:.2f} steps/s ({threads} threads)")
