"""Data-parallel training (DDP) under ``torchrun``: the process group, this process's rank, its device.

``train.loop.devices`` > 1 means the train stages run under
``torchrun --standalone --nproc-per-node <devices> ...``: the stage restarts itself that way
(:func:`.stage.torchrun_command`), so DVC and Snakemake run the same command for one or many devices; every process reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment torchrun sets,
joins one process group (NCCL on CUDA, gloo on CPU) and trains on its slice of every global batch
(``train.loop.batch_size`` / ``devices`` patches). Gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`; rank 0 alone validates and writes checkpoints, plots,
metrics and the MLflow run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "setup", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``world == 1``: no process group)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This rank's part of a global batch of ``batch`` items (equal, contiguous slices)."""
        n = batch // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def setup(devices: int, batch_size: int, device_request: str) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun prepared (once) and pick this rank's device.

    ``devices`` is ``train.loop.devices``; it must equal torchrun's ``WORLD_SIZE`` (1 without torchrun),
    and ``batch_size`` (the global batch) must be divisible by it. Errors say what to change.
    """
    from ..runtime import pick_device

    world = _env_int("WORLD_SIZE", 1)
    if world != devices:
        if world == 1:
            raise ValueError(f"train.loop.devices is {devices} but this process was not started by torchrun: run "
                             f"'torchrun --standalone --nproc-per-node {devices} -m retina_sr.stages train ...' "
                             "(the train stage does so itself), or set train.loop.devices to 1")
        raise ValueError(f"torchrun started {world} processes (WORLD_SIZE) but train.loop.devices is {devices}: "
                         f"use --nproc-per-node {devices} or set train.loop.devices to {world}")
    if batch_size % devices:
        raise ValueError(f"train.loop.batch_size {batch_size} (the global batch) is not divisible by "
                         f"train.loop.devices {devices}: every process takes batch_size/devices patches; "
                         f"use a multiple of {devices}")
    if world == 1:
        return DistContext(), pick_device(device_request)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(device_request)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                               "visible: lower train.loop.devices / --nproc-per-node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend=backend, **kwargs)
        owns = True
    if torch.distributed.get_world_size() != world:
        raise RuntimeError(f"the process group has {torch.distributed.get_world_size()} ranks, WORLD_SIZE says {world}")
    return DistContext(rank=torch.distributed.get_rank(), local_rank=local_rank, world=world, owns_group=owns), device


def teardown(ctx: DistContext) -> None:
    """Destroy the process group when :func:`setup` created it."""
    if ctx.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
