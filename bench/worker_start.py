"""What starting a replacement worker from the fork server costs, against forking it.

    python bench/worker_start.py [--repeats 5]

A worker pool of one preprocessing worker (its real initializer: the config and the packaged
MiniLM tokenizer) loses its worker to SIGKILL ``--repeats`` times; each time the seconds from
the kill to the replacement's first result are measured. Replacements come from the fork
server (``pipeline.workers``: the dispatcher thread starts them while the caller's thread
runs, where a fork could copy a lock another thread holds); the first start of the server
is shown apart. The same is measured with replacements forked, for comparison.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path; the repository goes first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import signal
import statistics
import time

from pipeline import workers
from pipeline.config import Config, to_dict
from pipeline.preprocess.run import init_worker


def pid_or_die(task: str) -> int:
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def replacement_seconds(repeats: int) -> list[float]:
    """Seconds from a worker's death to its replacement's first result, ``repeats`` times."""
    preprocess = to_dict(Config().preprocess)
    times = []
    with workers.WorkerPool(1, init_worker, (preprocess,), pid_or_die) as pool:
        list(pool.imap_unordered(["warm"]))
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.imap_unordered(["die"]))
            list(pool.imap_unordered(["first"]))
            times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    server = replacement_seconds(args.repeats + 1)  # the first one starts the fork server
    workers._REPLACEMENT_CONTEXT = workers._CONTEXT
    forked = replacement_seconds(args.repeats)
    result = {"fork_server_first": server[0], "fork_server": statistics.median(server[1:]),
              "fork": statistics.median(forked)}
    print(f"replacement worker, kill to first result (median of {args.repeats}, tokenizer loaded each time):")
    print(f"  from the fork server : {result['fork_server']:.2f} s (the first, starting the server: "
          f"{result['fork_server_first']:.2f} s)")
    print(f"  forked (before)      : {result['fork']:.2f} s")
    return result


if __name__ == "__main__":
    main()
