"""The prediction file of ``pipeline.infer``: guards before any work, then rows streamed.

``check_output`` refuses an ``--out`` that is an input of the run (links resolved) or a
directory. ``RowWriter`` writes JSON lines (strict: never ``NaN``) or CSV to ``OUT.partial``,
held under an ``fcntl.flock`` lock so that a second run with the same ``--out`` is refused,
and renames it to ``OUT`` when the run is complete; a failed write (a full disk) cuts the
file back to its last whole row and raises :class:`OutputError`.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipeline.infer.transcripts import InputError
from pipeline.writing import UnsafeOutputError, open_own

logger = logging.getLogger(__name__)

TASKS = ("emotion", "sentiment")


def check_output(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse an ``--out`` that would destroy an input or cannot be written, before any work:
    a directory, a path under a file, or the same file (after resolving links; hard links
    too) as any of ``inputs`` (clips, their sidecar transcripts, the checkpoint, the
    transcripts, the clip list), also as ``OUT.partial``."""
    partial = out.with_name(out.name + ".partial")
    for path in (out, partial):
        if path.is_dir():
            raise InputError(f"--out {out}: {path} is a directory; give a file name such as {path / 'predictions.jsonl'}")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, not a folder")

    def identity(path: Path) -> tuple:
        try:
            stat = path.stat()
            return ("inode", stat.st_dev, stat.st_ino)
        except OSError:
            return ("path", os.path.realpath(path))

    targets = {identity(out): out, identity(partial): partial}
    for path in inputs:
        if identity(path) in targets:
            raise InputError(f"--out {out}: {targets[identity(path)]} is an input of this run ({path}); "
                             "writing it would destroy it: choose another --out")


def claim_partial(partial: Path) -> Any:
    """Open ``partial`` for writing under an exclusive lock (``fcntl.flock``, released when the
    file closes or the process dies), truncated only once the lock is held: a second run
    with the same ``--out`` is refused instead of interleaving its rows into the first's."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = open_own(partial, "the rows of this run, until it ends")
    except UnsafeOutputError as err:
        raise InputError(f"--out {partial.with_name(partial.name.removesuffix('.partial'))}: {err}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise InputError(f"--out {partial.with_name(partial.name.removesuffix('.partial'))}: another "
                         f"pipeline.infer run is writing it ({partial} is locked); wait for it to finish "
                         "or choose another --out") from None
    os.ftruncate(descriptor, 0)
    return os.fdopen(descriptor, "wb", buffering=0)


class OutputError(Exception):
    """``OUT.partial`` could not be written (a full disk); the message says how many whole
    rows it holds."""


# A CSV cell starting with one of these is run as a formula by spreadsheet programs (a clip
# named "=HYPERLINK(...).mp4"): such text cells get a leading apostrophe (OWASP's advice).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defused(value: Any) -> Any:
    """``value``, with ``'`` before a text that a spreadsheet would read as a formula."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class RowWriter:
    """Writes rows as JSON lines or CSV to ``OUT.partial`` (locked, see ``claim_partial``),
    renamed to ``OUT`` by ``commit``. JSON is strict: a non-finite number is an error, never
    a ``NaN`` that JSON readers reject. Each row goes to the file as soon as it is made,
    unbuffered, so that after a failed write (a full disk) the file can be cut back to the
    end of the last whole row (``size`` bytes, ``rows`` rows)."""

    def __init__(self, out: Path, labels: Mapping[str, Sequence[str]], extra: Sequence[str] = ()) -> None:
        """``extra``: columns after the standard ones that every row has (``quantization``)."""
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        self.file = claim_partial(self.partial)
        self.size = self.rows = 0
        self.csv = None
        if out.suffix.lower() == ".csv":
            self.columns = (["clip", "id", "status", "error", "modalities"]
                            + [column for task in TASKS
                               for column in (task, *(f"{task}_prob_{name}" for name in labels[task]))]
                            + [f"regression_{name}" for name in labels["regression"]] + ["gates", *extra])
            self.line = io.StringIO()
            self.csv = csv.DictWriter(self.line, fieldnames=self.columns)
            self.csv.writeheader()
            self.append(self.csv_line(), row=False)

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            if self.csv is not None:
                self.csv.writerow({key: defused(value) for key, value in flatten_row(row).items()})
                self.append(self.csv_line())
            else:
                self.append(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")

    def csv_line(self) -> str:
        line = self.line.getvalue()
        self.line.seek(0)
        self.line.truncate()
        return line

    def append(self, line: str, row: bool = True) -> None:
        """Write one whole line (a row, or the CSV header); OutputError if it cannot be."""
        data = line.encode("utf-8")
        try:
            written = 0
            while written < len(data):  # an unbuffered write may take part of the data
                written += self.file.write(data[written:])
        except OSError as err:
            raise self.failed(err) from None
        self.size += len(data)
        if row:
            self.rows += 1

    def failed(self, err: OSError) -> OutputError:
        """Cut ``OUT.partial`` back to its whole rows after a failed write, close it, and say so."""
        try:
            self.file.truncate(self.size)
            kept = f"it holds the {self.rows} complete rows written before, the part of a row after them cut off"
        except OSError as cut:
            kept = f"it holds {self.rows} complete rows, then part of a row that could not be cut off ({cut})"
        finally:
            self.file.close()
        reason = f"{err.strerror} ({errno.errorcode[err.errno]})" if err.errno in errno.errorcode else str(err)
        return OutputError(f"{self.partial}: writing row {self.rows + 1} failed: {reason}; {kept}")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.partial, self.out)

    def abandon(self) -> None:
        """Close and remove ``OUT.partial`` before any row was written (a run that could not start)."""
        self.file.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Close without committing (a failed run keeps its rows in ``OUT.partial``)."""
        if not self.file.closed:
            self.file.close()
            logger.warning("the run stopped early; the rows written so far are in %s", self.partial)


def flatten_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row: probabilities as ``<task>_prob_<label>`` columns, regression targets as
    ``regression_<name>``, modalities joined by ``+``, gates as a JSON list."""
    flat = {key: row[key] for key in ("clip", "id", "status", "error")}
    flat["modalities"] = "+".join(row["modalities"])
    for task in TASKS:
        flat[task] = row[task]
        for name, p in (row[f"{task}_probs"] or {}).items():
            flat[f"{task}_prob_{name}"] = p
    for name, value in (row["regression"] or {}).items():
        flat[f"regression_{name}"] = value
    if "gates" in row:
        flat["gates"] = json.dumps(row["gates"])
    if "quantization" in row:
        flat["quantization"] = row["quantization"]
    return flat
