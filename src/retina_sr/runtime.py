"""Process-level helpers shared by every stage: threads, seeds, device, provenance."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np


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
