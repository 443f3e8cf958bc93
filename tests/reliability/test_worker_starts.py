"""Replacement workers are never forked from a process whose other threads run: the dispatcher
thread starts them while the caller's thread works (inference runs the model meanwhile), so
they come from a fork server, a single-threaded process; the first workers fork from the
caller's thread before the dispatcher thread starts. Either kind runs the same tasks."""
from __future__ import annotations

import os
import signal

from pipeline.workers import Lost, WorkerPool


def no_setup() -> None:
    pass


def parent_of_worker(task: str) -> int:
    """The worker's parent pid; the task "die" kills its worker (as the out-of-memory killer does)."""
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getppid()


def test_a_replacement_worker_comes_from_the_fork_server_and_works():
    with WorkerPool(1, no_setup, (), parent_of_worker) as pool:
        outcomes = dict(pool.imap_unordered(["before"]))
        assert outcomes["before"] == os.getpid()  # the first worker: forked by this process
        lost = dict(pool.imap_unordered(["die"]))
        assert isinstance(lost["die"], Lost) and "SIGKILL" in lost["die"].reason
        after = dict(pool.imap_unordered(["after", "again"]))
    assert after["after"] == after["again"] != os.getpid()  # its replacement: a child of the fork server
