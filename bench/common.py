"""What the benchmark scripts share: logging and threads at the start, the table and the
wall time at the end, and the MELD benches' dev and test figures."""
from __future__ import annotations

import argparse

import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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


def meld_splits(csv_dir: Path, test: bool = True) -> list[str]:
    """The MELD splits whose CSVs ``csv_dir`` holds, of train, dev and test (test is optional,
    and left out with ``test`` False)."""
    return [split for split in ("train", "dev", "test")
            if (csv_dir / f"{split}_sent_emo.csv").is_file() and (test or split != "test")]


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """``--holdout`` and ``--no-test``, the options of a bench that chooses settings."""
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="share of the training dialogues held out of training and scored as a second "
                             "validation split (data.holdout_dialogues; 0.1 when choosing settings, so a change is "
                             "kept only when it wins on dev and on the held-out dialogues) (default: %(default)s)")
    parser.add_argument("--no-test", dest="test", action="store_false",
                        help="never read test_sent_emo.csv, for runs that choose settings (default: each run's "
                             "dev-chosen best.pt is scored once on test when the folder has the CSV)")


def selection_overrides(args: argparse.Namespace, cache_dir: Path) -> list[str]:
    """The ``data.*`` overrides of ``--holdout`` and ``--no-test`` for a run on ``cache_dir``."""
    tested = args.test and (Path(cache_dir) / "test").is_dir()
    return [f"data.holdout_dialogues={args.holdout}", "data.test_split=test" if tested else "data.test_split="]


def emotion_figures(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Accuracy, weighted and macro F1, and the F1 of each class, of a run's emotion metrics."""
    if not metrics:
        return None
    emotion = metrics["emotion"]
    return {"accuracy": emotion["accuracy"], "weighted_f1": emotion["weighted_f1"], "macro_f1": emotion["macro_f1"],
            "per_class": {name: scores["f1"] for name, scores in emotion["per_class"].items()}}


def held_out(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The emotion figures of the dialogues held out of training (``--holdout``) at the epoch
    dev chose, or None."""
    return emotion_figures(result.get("holdout"))


def dev_and_test(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The emotion figures of a ``pipeline.train`` result at its best epoch on dev, and of that
    epoch's ``best.pt`` on test (None when the run had no test split)."""
    return emotion_figures(result["epochs"][result["best_epoch"] - 1]["val"]), emotion_figures(result.get("test"))


def per_class_lines(rows: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]) -> list[str]:
    """``name: class dev/test, ...`` per (name, dev figures, test figures) row."""
    return [f"- {name}: " + ", ".join(f"{label} {dev['per_class'][label]:.2f}"
                                      + (f"/{test['per_class'][label]:.2f}" if test else "")
                                      for label in dev["per_class"]) for name, dev, test in rows]


def peak_memory(device: torch.device | str) -> str:
    """The peak memory of this process so far: the CUDA allocator's on a GPU, else the
    resident set's high-water mark (which counts every thread's memory, not only tensors)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (allocated by torch)"
    import resource

    return f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (this process)"

