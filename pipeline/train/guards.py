"""Guards of a training run: a clean stop when a scheduler preempts it, and one run per
``output_dir``.

**Preemption.** Schedulers (SLURM, Kubernetes, torchrun passing it on) stop a job with
SIGTERM and kill it a grace period later. Inside :class:`StopOnSignal` the first SIGTERM
only sets a flag: the training loop finishes its current optimizer step, writes ``last.pt``
with the place in the epoch, says how to resume and exits with status 128 + the signal
number (143). A second SIGTERM acts as it did before (it kills). Under DDP the ranks agree
on the step to stop at (the flag is reduced over ranks at every step), since a signal may
reach them at different moments.

**One run per folder** (:class:`RunLock`). Two runs writing one folder mix their checkpoints
and metrics, and one of them dies on the other's ``best.pt.tmp``. Rank 0 takes an exclusive
lock on ``output_dir/.lock`` (``fcntl.flock``: released when the process exits, however it
exits) before it writes anything into the folder; a second run is refused with the pid of
the one holding it.

**Another run's results** (:func:`check_output_dir`). A folder holding a run's ``best.pt``
or ``metrics.json`` is never trained over unless ``train.overwrite=true`` says so (a
``last.pt`` is continued with ``train.resume=true``); a folder that cannot be written is
refused before the caches are read or the model built.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed

from pipeline.writing import open_own

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped on a signal after writing ``last.pt``; ``status`` is the exit status."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.status = 128 + signum


class StopOnSignal:
    """``with StopOnSignal() as stop:`` ... ``stop.requested(device)`` at each optimizer step."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in self.signals:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))  # a second one is not caught
        log.warning("%s received: finishing the current step, then writing last.pt (send it again to stop at once)",
                    signal.Signals(signum).name)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (collective under DDP: every rank must call it)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else self.received], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if self.received is None and flag.item():
            self.received = int(flag.item())
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal"


class OutputDirInUse(FileExistsError):
    """Another training run holds ``output_dir``."""


# What a finished or interrupted run leaves in output_dir (see pipeline.train).
RESULTS = ("last.pt", "best.pt", "metrics.json")


class OutputDirError(FileExistsError):
    """``output_dir`` holds another run's results, or cannot be written."""


def check_output_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse ``out_dir`` (rank 0, before any work) when it holds another run's results that
    this run would replace (``overwrite`` allows it; ``resume`` continues a ``last.pt``), or
    when a file cannot be created there. Creates nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"output_dir {out_dir} is a file, not a folder; choose another output_dir")
    found = [name for name in RESULTS if (out_dir / name).is_file()]
    if found and not overwrite and not (resume and "last.pt" in found):
        how = ("continue it with train.resume=true, replace it with train.overwrite=true"
               if "last.pt" in found else "train.overwrite=true replaces them")
        raise OutputDirError(f"output_dir {out_dir} already holds a run ({', '.join(found)}); {how}, "
                             "or choose another output_dir")
    nearest = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    try:
        descriptor, probe = tempfile.mkstemp(dir=nearest, prefix=".write-check.")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        raise OutputDirError(f"output_dir {out_dir} cannot be written ({nearest}: {err.strerror or err}); "
                             "choose another output_dir") from None


class RunLock:
    """``acquire()`` (rank 0) before writing into ``out_dir``; ``release()`` at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self.descriptor: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = open_own(self.path, "the lock of a training run")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise OutputDirInUse(f"output_dir {self.path.parent} is in use by another training run (pid {holder}); "
                                 "wait for it to finish or choose another output_dir") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        self.descriptor = descriptor

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # the lock goes with it; the file stays (removing it would race)
            self.descriptor = None
