"""Long-lived worker processes that outlive the loss of one of them.

``multiprocessing.Pool`` waits forever for the result of a task whose worker was killed (the
kernel's out-of-memory killer sends SIGKILL), and ``ProcessPoolExecutor`` fails every pending
task without saying which one the dead process held. Here each worker has its own pipe and
at most ``depth`` tasks assigned, taken in order, so the parent always knows which task a
dead worker was running: that task comes back as :class:`Lost` with the reason, the tasks
queued behind it go to the other workers, a fresh worker takes its place, and the run goes
on. A dispatcher thread in the parent keeps the workers fed and drains their results while
the caller is busy (inference runs the model meanwhile).

Preprocessing (``pipeline.preprocess``) and inference decoding (``pipeline.infer.decoding``) use it.
"""
from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import queue
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("fork")  # workers inherit the loaded modules: no re-import per worker
# Replacements are started by the dispatcher thread while the caller's thread runs (the model,
# in inference): forking a process with several running threads can copy a lock another
# thread holds, and the child deadlocks on it. They come from a fork server instead, a
# single-threaded process started once (the first replacement pays its start-up).
_REPLACEMENT_CONTEXT = multiprocessing.get_context("forkserver")
STOP_SECONDS = 10.0  # how long a closing pool waits for its workers before terminating them


@dataclass(frozen=True)
class Lost:
    """The outcome of a task whose worker process died while running it."""

    reason: str


class WorkerStartError(RuntimeError):
    """A worker process failed while starting (its initializer raised or it died)."""


def death_reason(exitcode: int | None) -> str:
    """Why a worker process ended, in words (a negative exit code is the signal that killed it)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ", e.g. by the out-of-memory killer" if -exitcode == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with status {exitcode}"


def _serve(connection: Any, inherited: Sequence[Any], initializer: Callable[..., None], initargs: tuple,
           function: Callable[[Any], Any]) -> None:
    """The loop of a worker process: start up, then run the tasks it receives one by one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    for other in inherited:  # other workers' pipes, copied by fork: holding them would hide a dead parent
        other.close()
    try:
        initializer(*initargs)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which stops the run
        connection.send(("failed", None, f"{type(err).__name__}: {err}"))
        return
    connection.send(("ready", None, None))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        key, task = message
        try:
            outcome: tuple[str, Any] = ("ok", function(task))
        except Exception as err:  # noqa: BLE001 - re-raised in the parent
            outcome = ("raised", err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}"))
            logger.debug("task %s raised:\n%s", key, traceback.format_exc())
        try:
            connection.send((key, *outcome))
        except (OSError, EOFError):
            return


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001
        return False
    return True


@dataclass
class _Worker:
    process: Any
    connection: Any
    assigned: collections.deque = field(default_factory=collections.deque)  # (key, task), in the order sent
    ready: bool = False


class WorkerPool:
    """``workers`` processes, each running ``initializer(*initargs)`` once and then
    ``function(task)`` per task. ``submit`` queues a task and returns its key; ``results``
    yields ``(key, outcome)`` as tasks finish, where a task whose worker died gives
    :class:`Lost`; an exception raised by ``function`` is re-raised in the caller. Use it
    as a context manager (``close`` on success, ``terminate`` on an error)."""

    def __init__(self, workers: int, initializer: Callable[..., None], initargs: tuple,
                 function: Callable[[Any], Any], depth: int = 2) -> None:
        self.size, self.depth = max(1, workers), max(1, depth)
        self.initializer, self.initargs, self.function = initializer, initargs, function
        self.workers: list[_Worker] = []
        self.queued: collections.deque = collections.deque()  # (key, task) not sent yet
        self.outcomes: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.wake_read, self.wake_write = _CONTEXT.Pipe(duplex=False)
        self.keys = itertools.count()
        self.stopping = False
        self.thread = threading.Thread(target=self._dispatch_safely, name="worker-pool", daemon=True)
        self.lost = 0  # workers lost so far

    # ------------------------------------------------------------------ caller side
    def start(self) -> "WorkerPool":
        for _ in range(self.size):  # from the caller's thread, before the dispatcher thread runs
            self.workers.append(self._spawn())
        self.thread.start()
        return self

    def submit(self, task: Any) -> int:
        key = next(self.keys)
        with self.lock:
            self.queued.append((key, task))
        self._wake()
        return key

    def next_outcome(self) -> tuple[int, Any]:
        """The next finished ``(key, result or Lost)``; blocks until one is there."""
        key, kind, value = self.outcomes.get()
        if kind == "raised":
            raise value
        if kind == "fatal":
            raise WorkerStartError(value)
        return key, value

    def ready(self) -> bool:
        """Whether an outcome is waiting."""
        return not self.outcomes.empty()

    def imap_unordered(self, tasks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """``(task, result or Lost)`` of every task, in completion order."""
        submitted = {self.submit(task): task for task in tasks}
        while submitted:
            key, outcome = self.next_outcome()
            yield submitted.pop(key), outcome

    def imap(self, tasks: Iterable[Any], lookahead: int) -> Iterator[tuple[Any, Any, bool]]:
        """``(task, result or Lost, next_ready)`` in the order of ``tasks``, at most
        ``lookahead`` in flight; ``next_ready``: the following task's outcome is already here."""
        pending = iter(tasks)
        order: collections.deque = collections.deque()
        done: dict[int, Any] = {}
        for task in itertools.islice(pending, max(1, lookahead)):
            order.append((self.submit(task), task))
        while order:
            key, task = order.popleft()
            while key not in done:
                finished, outcome = self.next_outcome()
                done[finished] = outcome
            for task_next in itertools.islice(pending, 1):
                order.append((self.submit(task_next), task_next))
            while self.ready():  # collect what is already there, to answer next_ready
                finished, outcome = self.next_outcome()
                done[finished] = outcome
            yield task, done.pop(key), not order or order[0][0] in done

    def close(self) -> None:
        """Stop the workers after their current task (they get no new ones)."""
        self._stop()
        for worker in self.workers:
            try:
                worker.connection.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(STOP_SECONDS)
        self.terminate()

    def terminate(self) -> None:
        """Stop the workers now."""
        self._stop()
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            worker.process.join()
            worker.connection.close()

    def __enter__(self) -> "WorkerPool":
        return self if self.thread.is_alive() else self.start()

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self.terminate() if kind is not None else self.close()

    # ------------------------------------------------------------------ dispatcher thread
    def _spawn(self, replacement: bool = False) -> _Worker:
        """A new worker: forked from this process, or (``replacement``, from the dispatcher
        thread) from the fork server, which inherits none of this process's pipes."""
        context = _REPLACEMENT_CONTEXT if replacement else _CONTEXT
        if replacement:  # the server (started by the first replacement) imports the task's modules once
            context.set_forkserver_preload(sorted({self.initializer.__module__, self.function.__module__}))
        parent_end, child_end = context.Pipe(duplex=True)
        inherited = [] if replacement else [worker.connection for worker in self.workers] + [
            parent_end, self.wake_read, self.wake_write]
        process = context.Process(target=_serve, daemon=True, name="pipeline-worker",
                                  args=(child_end, inherited, self.initializer, self.initargs, self.function))
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    def _wake(self) -> None:
        try:
            self.wake_write.send_bytes(b"")
        except OSError:
            pass

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._wake()
            if self.thread.is_alive() and threading.current_thread() is not self.thread:
                self.thread.join()

    def _dispatch_safely(self) -> None:
        try:
            self._dispatch()
        except BaseException:  # noqa: BLE001 - a bug here must not leave the caller waiting forever
            self.outcomes.put((None, "fatal", f"the worker pool failed:\n{traceback.format_exc()}"))

    def _dispatch(self) -> None:
        while not self.stopping:
            self._send_queued()
            watched = [self.wake_read] + [w.connection for w in self.workers] + [w.process.sentinel
                                                                                 for w in self.workers]
            ready = set(multiprocessing.connection.wait(watched))
            if self.wake_read in ready:
                while self.wake_read.poll():
                    self.wake_read.recv_bytes()
            for index, worker in enumerate(self.workers):
                if worker.connection in ready or worker.process.sentinel in ready:
                    if not self._receive(worker):
                        return
                if worker.process.sentinel in ready:
                    if not self._replace(index, worker):
                        return

    def _send_queued(self) -> None:
        for worker in self.workers:
            while len(worker.assigned) < self.depth:
                with self.lock:
                    if not self.queued:
                        return
                    key, task = self.queued.popleft()
                try:
                    worker.connection.send((key, task))
                except OSError:  # it just died: the task goes to another worker
                    with self.lock:
                        self.queued.appendleft((key, task))
                    break
                worker.assigned.append((key, task))

    def _receive(self, worker: _Worker) -> bool:
        """Take every message the worker has sent; False when the run must stop."""
        try:
            while worker.connection.poll():
                key, kind, value = worker.connection.recv()
                if key == "ready":
                    worker.ready = True
                elif key == "failed":
                    self.outcomes.put((None, "fatal", f"a worker process could not start: {value}"))
                    return False
                else:
                    worker.assigned.remove(next(entry for entry in worker.assigned if entry[0] == key))
                    self.outcomes.put((key, kind, value))
        except (EOFError, OSError):
            pass  # it died; its sentinel says so
        return True

    def _replace(self, index: int, worker: _Worker) -> bool:
        """A dead worker: its current task is lost, the ones queued behind it go back to the
        queue, and a new worker takes its place. False when the run must stop."""
        worker.process.join()
        reason = death_reason(worker.process.exitcode)
        worker.connection.close()
        if not worker.ready:
            self.outcomes.put((None, "fatal", f"a worker process died while starting ({reason})"))
            return False
        self.lost += 1
        if worker.assigned:
            held, _ = worker.assigned.popleft()
            with self.lock:
                self.queued.extendleft(reversed(worker.assigned))
            self.outcomes.put((held, "ok", Lost(f"{reason} while working on it")))
            logger.error("%s while working on task %s; starting a new worker", reason, held)
        self.workers[index] = self._spawn(replacement=True)
        return True
