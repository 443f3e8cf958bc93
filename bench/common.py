"""What the benchmark scripts share: logging and threads at the start, the table and the
wall time at the end."""
from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import torch


def start(threads: int = 0, level: int = logging.INFO) -> float:
    """Log to stderr at ``level``, use ``threads`` torch threads (0: torch's choice); the start time."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    return time.perf_counter()


def finish(table: str, started: float) -> None:
    """Print the Markdown ``table`` and the wall time since ``started``."""
    print(table)
    print(f"\nTotal wall time: {(time.perf_counter() - started) / 60:.1f} min "
          f"({torch.get_num_threads()} torch threads)")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> list[str]:
    """The lines of a Markdown table; ``align`` has one of ``l``, ``c``, ``r`` per column."""
    rule = {"l": "---", "c": ":---:", "r": "---:"}
    return [f"| {' | '.join(header)} |", f"|{'|'.join(rule[a] for a in align)}|",
            *(f"| {' | '.join(str(cell) for cell in row)} |" for row in rows)]
