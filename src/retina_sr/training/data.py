"""Training/validation patches (``data/patches/{train,val}.npy``) and a resumable batch sampler.

File layout (docs/architecture.md; :func:`retina_sr.data.patches.save_patches`): one record per crop with
the fields ``hr`` uint8 (crop, crop, 3) and ``lr_x{s}`` uint8 (crop/s, crop/s, 3) for every zoom ``s`` in
``data.scales`` (plus ``fov``, ``ids``), memory-mapped. Arrays stay uint8 on disk; batches are converted to
float NCHW in [0, 1] on the device (:func:`retina_sr.models.tensors.to_tensor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PatchSet", "PatchDataError", "load_patches", "BatchSampler", "OnlineDegrader"]


class PatchDataError(ValueError):
    """A patches file is missing or does not have the layout of docs/architecture.md."""


@dataclass
class PatchSet:
    """HR patches and their degraded LR inputs per zoom (uint8 NHWC arrays)."""

    hr: np.ndarray
    lr: dict[int, np.ndarray]
    path: Path
    fov: np.ndarray | None = None  # bool (N, crop, crop) field-of-view masks, when the file has them

    def __len__(self) -> int:
        return int(self.hr.shape[0])

    @property
    def crop(self) -> int:
        return int(self.hr.shape[1])


def load_patches(path: str | Path, scales: list[int], limit: int | None = None) -> PatchSet:
    """Map ``path`` (``np.load(mmap_mode="c")``) and check fields, dtypes and shapes against ``scales``;
    errors name the file and key.

    The arrays of the returned set are :class:`numpy.memmap` views of the file (one record per crop:
    :func:`retina_sr.data.patches.save_patches`): indexing a batch (``hr[idx]``) reads only those crops, so
    a training process holds its batches, not the split (~6 GB in the full study). Copy-on-write
    (``"c"``): the views are writable for torch, and a write never reaches the file.
    ``limit`` keeps ``limit`` patches evenly spaced over the file, copied into memory (validation uses
    ``train.loop.max_val_patches``): the file holds the patches image by image, so its first ``limit``
    patches would come from the first few images only.
    """
    path = Path(path)
    if not path.is_file():
        raise PatchDataError(f"patches file {path} not found: run the 'patches' stage first (dvc repro patches)")
    try:
        rec = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any reader failure means a bad file
        raise PatchDataError(f"{path} is not a readable .npy file ({type(err).__name__}: {err}): rerun the 'patches' stage") from None
    keys = set(rec.dtype.names or ())
    if rec.ndim != 1 or not keys:
        raise PatchDataError(f"{path}: expected one record per crop (a structured array), got {rec.dtype} {rec.shape}: "
                             "rerun the 'patches' stage")
    needed = ["hr"] + [f"lr_x{s}" for s in scales]
    missing = [k for k in needed if k not in keys]
    if missing:
        raise PatchDataError(
            f"{path}: missing arrays {missing} (has {sorted(keys)}); data.scales is {scales}: "
            "rerun the 'patches' stage with the same data.scales"
        )
    hr = rec["hr"]
    lr = {s: rec[f"lr_x{s}"] for s in scales}
    fov = rec["fov"] if "fov" in keys else None
    if hr.dtype != np.uint8 or hr.ndim != 4 or hr.shape[3] != 3 or hr.shape[1] != hr.shape[2]:
        raise PatchDataError(f"{path}: 'hr' must be uint8 (N, crop, crop, 3), got {hr.dtype} {hr.shape}")
    if hr.shape[0] == 0:
        raise PatchDataError(f"{path}: holds no patches: check data.n_images / split and rerun 'patches'")
    crop = hr.shape[1]
    for s, a in lr.items():
        want = (hr.shape[0], crop // s, crop // s, 3)
        if a.dtype != np.uint8 or a.shape != want or crop % s:
            raise PatchDataError(f"{path}: 'lr_x{s}' must be uint8 {want}, got {a.dtype} {a.shape}")
    if fov is not None and (fov.dtype != bool or fov.shape != hr.shape[:3]):
        raise PatchDataError(f"{path}: 'fov' must be bool {hr.shape[:3]}, got {fov.dtype} {fov.shape}")
    if limit is not None and limit < hr.shape[0]:
        keep = np.linspace(0, hr.shape[0] - 1, limit).round().astype(np.int64)
        hr, lr = hr[keep], {s: a[keep] for s, a in lr.items()}
        fov = fov[keep] if fov is not None else None
    return PatchSet(hr=hr, lr=lr, path=path, fov=fov)


class BatchSampler:
    """Shuffled epochs without replacement, reproducible from ``(seed, epoch)`` and resumable.

    Epoch ``e`` visits ``default_rng([seed, e]).permutation(n)``; a batch that crosses an epoch
    boundary continues in the next epoch. The position (epoch, offset) is the whole state, so a
    resumed run draws exactly the batches an uninterrupted run would.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"BatchSampler needs n >= 1 and batch_size >= 1 (got {n}, {batch_size})")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        """Indices of the next batch, in draw order."""
        out: list[np.ndarray] = []
        need = self.batch_size
        while need:
            take = min(need, self.n - self.offset)
            out.append(self._perm[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return np.concatenate(out)

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["n"], state["batch_size"], state["seed"]) != (self.n, self.batch_size, self.seed):
            raise ValueError(
                f"sampler state is for n={state['n']}, batch={state['batch_size']}, seed={state['seed']}, "
                f"not n={self.n}, batch={self.batch_size}, seed={self.seed}"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self._permutation(self.epoch)


class OnlineDegrader:
    """Fresh LR inputs every step from the stored HR crops (``train.loop.degradation: online``).

    For step ``k`` the patch at position ``i`` of the global batch gets its own generator seeded with
    ``(seed, k, i)``; it draws one of the 8 dihedral transforms and a blur sigma / noise std / JPEG
    quality from ``data.patches``' ranges, then the patches stage's own
    :func:`retina_sr.data.patches.degrade` applies them: one degradation model, and a run that resumes at
    step ``k`` draws exactly what an uninterrupted run would. Because the draw depends on the position
    in the global batch only (``offset``), the shards of a data-parallel run together degrade the global
    batch exactly as one process does. With fixed LR arrays, 100 epochs would show every crop with the
    same noise 100 times (the model memorises it).
    """

    def __init__(self, cfg, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)

    def _draw(self, step: int, pos: int) -> tuple[int, bool, int | None, float, float, np.random.Generator]:
        """Position ``pos`` of step ``step``'s global batch: (rot90 k, flip, JPEG quality, sigma, noise std, rng)."""
        pc = self.cfg
        rng = np.random.default_rng([self.seed, 0x5EED, int(step), int(pos)])
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        q = int(rng.integers(pc.jpeg_quality[0], pc.jpeg_quality[1] + 1)) if pc.jpeg_quality else None
        return k, flip, q, float(rng.uniform(*pc.blur_sigma)), float(rng.uniform(*pc.noise_std)), rng

    def __call__(self, hr: np.ndarray, zoom: int, step: int, fov: np.ndarray | None = None,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``hr`` uint8 (N, c, c, 3) [+ ``fov`` bool (N, c, c)], the global batch's items ``offset`` ..
        ``offset + N - 1`` -> (transformed HR, its LR (N, c/zoom, c/zoom, 3), transformed FOV or None)."""
        from ..data.patches import degrade

        hrs, lrs, fovs = [], [], []
        for i, img in enumerate(hr):
            k, flip, q, sigma, noise_std, rng = self._draw(step, offset + i)
            img = np.ascontiguousarray(_dihedral(img, k, flip))
            if fov is not None:
                fovs.append(_dihedral(fov[i], k, flip))
            lrs.append(degrade(img, zoom, sigma, noise_std, rng, q, self.cfg.poisson_peak))
            hrs.append(img)
        return np.stack(hrs), np.stack(lrs), (np.ascontiguousarray(np.stack(fovs)) if fov is not None else None)

    def on_device(self, hr: torch.Tensor, zoom: int, step: int, fov: torch.Tensor | None = None,
                  offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`__call__` on torch tensors where they are (``train.loop.degrade_on: device``): the same
        dihedral transforms, sigmas and noise stds (drawn on the host from the same per-position
        generators), applied by :func:`retina_sr.data.degrade_torch.degrade_batch`; the Gaussian noise comes
        from a torch generator on ``hr``'s device seeded with ``(seed, step)`` (drawn for the whole global
        batch up to this shard, so shards together degrade it as one process does). No JPEG here."""
        from ..data.degrade_torch import degrade_batch, dihedral_batch

        if self.cfg.jpeg_quality:
            raise ValueError("data.patches.jpeg_quality is set, and JPEG runs on the host only: set "
                             "train.loop.degrade_on to 'host' (or 'auto')")
        draws = [self._draw(step, offset + i) for i in range(hr.shape[0])]
        ks, flips = [d[0] for d in draws], [d[1] for d in draws]
        hr = dihedral_batch(hr, ks, flips)
        fov = dihedral_batch(fov, ks, flips) if fov is not None else None
        seed = int(np.random.SeedSequence([self.seed, 0x5EED, int(step)]).generate_state(1, np.uint64)[0] >> 1)
        gen = torch.Generator(device=hr.device).manual_seed(seed)
        lr = degrade_batch(hr, zoom, torch.tensor([d[3] for d in draws]), torch.tensor([d[4] for d in draws]), gen,
                           self.cfg.poisson_peak, skip=offset)
        return hr, lr, fov


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    return np.rot90(a[:, ::-1] if flip else a, k)
