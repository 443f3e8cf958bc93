"""Distributed training helpers for torchrun (after torchvision ``references/classification/utils.py``).

A process started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment; a plain ``python -m pipeline.train`` finds none of them and runs as the single
rank 0. The backend follows the device: NCCL on GPUs, gloo on CPU. A rank that fails makes
the job fail: torchrun stops the other workers when one exits non-zero, and the finite
process-group ``timeout`` ends a collective that waits on a rank that never arrives when
launched some other way, so no job hangs.
"""
from __future__ import annotations

import logging
import os
import random
from datetime import timedelta
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.execution import pick_device
from pipeline.logs import configure
from pipeline.writing import write_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_distributed() -> bool:
    """True once this process has joined a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` under torchrun (again after unfreezing: DDP registers only the
    parameters that require gradients when it is built)."""
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)



def init_distributed(device_name: str = "auto", timeout_minutes: float = 10.0) -> torch.device:
    """Join the torchrun process group when there is one and return this rank's device.

    ``set_device`` comes before ``init_process_group`` so NCCL binds each rank to its own GPU.
    """
    device = pick_device(device_name)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)
    log.info("rank %d/%d joined (%s, device %s)", get_rank(), get_world_size(), backend, device)
    return device


def cleanup() -> None:
    """Leave the process group (every rank, at the end of the job)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch with ``seed + rank`` (nanoGPT): ranks draw different
    augmentations, while model weights stay equal because DDP broadcasts rank 0's."""
    rank_seed = seed + get_rank()
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)
    return rank_seed


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a quota): the old file is kept."""


def save_on_main(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` on rank 0, atomically: a killed job never leaves half a file, and a
    failed write (a full disk) leaves the previous file and no ``.tmp``, and raises
    CheckpointWriteError on every rank (collective: every rank calls it)."""
    def write() -> None:
        try:
            write_atomic(path, lambda file: torch.save(obj, file))
        except OSError as err:
            kept = "the previous one is kept" if os.path.exists(path) else "no earlier one exists"
            raise CheckpointWriteError(err.errno, f"writing {path} failed: {err.strerror or err} ({kept}); "
                                                  "free space there and resume with train.resume=true") from None

    from_main(write)


def from_main(read: Callable[[], T]) -> T:
    """``read()`` on rank 0 and its result on every rank (or the exception it raised, raised
    on every rank). For what rank 0 alone writes (``output_dir``): the other ranks may run
    on machines that do not share its filesystem, so they never read those files themselves."""
    if not is_distributed():
        return read()
    payload: list[Any] = [None]
    if is_main_process():
        try:
            payload[0] = (True, read())
        except Exception as err:  # every rank raises it, so no rank waits on the others
            payload[0] = (False, err)
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank, in place."""
    if is_distributed():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers to every rank. Each rank updates BatchNorm running statistics
    from its own batches; after this every rank evaluates the model that rank 0 saves."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over all ranks (e.g. the epoch's training loss)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / get_world_size()


def setup_logging() -> None:
    """INFO on rank 0, WARNING elsewhere, so one rank speaks for the job."""
    level = logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING
    configure(level, force=True)
