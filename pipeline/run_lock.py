"""One training run per ``output_dir``: an exclusive lock on ``output_dir/.lock``.

Two runs writing one folder mix their checkpoints and metrics, and one of them dies on the
other's ``best.pt.tmp``. Rank 0 takes the lock (``fcntl.flock``: released when the process
exits, however it exits) before it writes anything into the folder; a second run is refused
with the pid of the one holding it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class OutputDirInUse(FileExistsError):
    """Another training run holds ``output_dir``."""


class RunLock:
    """``acquire()`` (rank 0) before writing into ``out_dir``; ``release()`` at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self.descriptor: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
