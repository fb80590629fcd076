"""Process-level helpers shared by every stage: threads, seeds, device, provenance, timing, exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import Params


def set_threads(n: int | None) -> int:
    """Map a stage's thread budget (Snakemake ``threads``, ``--threads``) onto torch/OpenCV/BLAS.

    Snakemake 9 passes ``--cores 8`` as given even on a 2-core machine, so the number is capped at
    the CPUs this process may use.
    """
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(int(n or avail), avail))
    import torch

    torch.set_num_threads(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover - opencv is a core dependency
        pass
    return n


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto"):
    """``auto`` -> CUDA when present, else CPU. ``cuda`` without a GPU is a clear error."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible: set it to 'auto' or 'cpu'")
    return torch.device(requested)


def device_name(device) -> str:
    import platform

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit(root: str | Path = ".") -> str:
    """The current git commit (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1,
              sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls; ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs after the warm-up and after every timed call, so asynchronous
    device work is inside the time it belongs to."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------- stage processes
#: exit status of a process whose input (arguments, parameters, files) must be fixed, and of a failure
USAGE_ERROR, RUNTIME_FAILURE = 2, 1


def exit_code(err: BaseException) -> int | None:
    """The one error -> exit-status mapping of the stages and the CLI.

    An error class may set ``exit_code`` itself (e.g. Kaggle credentials: 2). Otherwise ``ValueError``
    (every configuration/input error of the package derives from it), ``FileNotFoundError`` and
    ``FileExistsError`` (a file in the way) are usage errors (2); other ``RuntimeError``/``OSError``/
    ``MemoryError`` are runtime failures (1); anything else is a bug (``None``: show the traceback).
    """
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError)):
        return USAGE_ERROR
    if isinstance(err, (RuntimeError, OSError, MemoryError)):
        return RUNTIME_FAILURE
    return None


class _StderrHandler(logging.StreamHandler):
    """One line per message on the current ``sys.stderr`` (looked up at each message, not at set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
    """One logging set-up for stage processes: the package's messages (logger ``retina_sr``), one line
    each, on stderr; idempotent. Library code only logs; a process sets this up once."""
    logger = logging.getLogger("retina_sr")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())


def add_stage_arguments(p: argparse.ArgumentParser) -> None:
    """The options every stage (and the CLI commands that run one) takes."""
    p.add_argument("--params", action="append", default=None, metavar="FILE",
                   help="parameter file(s); later ones are merged on top (default: params.yaml)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch/OpenCV (default: all)")
    p.add_argument("--root", default=".", help="repository root holding data/ and models/ (default: .)")


def load_stage(args: argparse.Namespace) -> Params:
    """The parameters of ``--params`` (merged in order; default ``params.yaml``); sets ``--threads``
    (``args.threads`` becomes the number in effect)."""
    from .config import load_params

    files = args.params or ["params.yaml"]
    params = load_params(files[0], *files[1:])
    args.threads = set_threads(args.threads)
    return params
