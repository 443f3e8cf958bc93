"""MELD as it comes: where the CSVs and clip folders are, and what their rows say.

``MELD.Raw.tar.gz`` unpacks to ``train_sent_emo.csv``, ``dev_sent_emo.csv``,
``test_sent_emo.csv`` and (from the nested tarballs) ``train_splits/``,
``dev_splits_complete/``, ``output_repeated_splits_test/``; they are found up to
``SEARCH_DEPTH`` folders below the root given, and every path can be passed explicitly.
The clip of a row is ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4``.
"""
from __future__ import annotations

import bisect
import csv
import io
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.labels import EMOTIONS, SENTIMENTS

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
CSV_NAMES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
SEARCH_DEPTH = 3  # e.g. ROOT/MELD.Raw/train/train_splits
COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
# Read when the header has it: a real-valued polarity (e.g. a MOSI-style score in [-3, 3]),
# the regression target in place of the sentiment's -1 / 0 / 1; an empty cell means unknown.
OPTIONAL_COLUMNS = ("Polarity",)


class MeldFormatError(ValueError):
    """A MELD CSV that cannot be read as labelled utterances (the message names file and line)."""


@dataclass(frozen=True)
class MeldRow:
    """One labelled utterance of a MELD CSV (text as written in the file)."""

    id: str  # dia{dialogue_id}_utt{utterance_id}, also the clip's file stem
    dialogue_id: int
    utterance_id: int
    speaker: str
    utterance: str
    emotion: str  # one of labels.EMOTIONS
    sentiment: str  # one of labels.SENTIMENTS
    line: int  # where the row starts in its CSV, for messages
    polarity: float | None = None  # the optional Polarity column (None: absent or empty)


def utterance_id(dialogue_id: int, utterance_id: int) -> str:
    return f"dia{dialogue_id}_utt{utterance_id}"


# --------------------------------------------------------------------------- finding files
def find_under(root: str | Path, name: str, want_dir: bool) -> Path | None:
    """The shallowest ``name`` (a folder when ``want_dir``) at most SEARCH_DEPTH levels
    below ``root``, skipping hidden folders and macOS ``__MACOSX`` copies."""
    root = Path(root)
    for depth in range(SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth + [name])
        for match in sorted(root.glob(pattern)):
            parts = match.relative_to(root).parts[:-1]
            if any(part.startswith((".", "__MACOSX")) for part in parts):
                continue
            if match.is_dir() if want_dir else match.is_file():
                return match
    return None


def find_csv(root: str | Path, split: str, csv_dir: str | Path | None = None) -> Path:
    """The CSV of ``split``: in ``csv_dir`` when given, else found under ``root``."""
    name = CSV_NAMES[split]
    found = Path(csv_dir) / name if csv_dir else find_under(root, name, want_dir=False)
    if found is None or not found.is_file():
        where = f"in {csv_dir}" if csv_dir else f"under {root} (searched {SEARCH_DEPTH} folders deep)"
        raise FileNotFoundError(f"no {name} {where}; pass --{split}-csv FILE or --csv-dir DIR")
    return found


def find_clip_dir(root: str | Path, split: str) -> Path:
    """The clip folder of ``split`` found under ``root``."""
    name = CLIP_DIRS[split]
    found = find_under(root, name, want_dir=True)
    if found is None:
        raise FileNotFoundError(f"no clip folder {name}/ under {root} (searched {SEARCH_DEPTH} "
                                f"folders deep); pass --{split}-clips DIR")
    return found


def clip_files(clip_dir: str | Path) -> dict[str, Path]:
    """Every ``*.mp4`` in ``clip_dir`` by file stem (the id of a labelled clip), except
    hidden files such as the ``._dia0_utt0.mp4`` metadata that macOS tar adds."""
    return {path.stem: path for path in sorted(Path(clip_dir).glob("*.mp4")) if not path.name.startswith(".")}


# --------------------------------------------------------------------------- reading a CSV
NOT_UTF8 = re.compile("[\udc80-\udcff]+")  # the bytes that UTF-8 decoding with surrogateescape could not read


def read_text(path: Path) -> str:
    """The text of a CSV that should be UTF-8 (a BOM is dropped) but may hold cp1252 bytes:
    each byte sequence that is not UTF-8 is decoded as cp1252 on its own (Latin-1 for the
    five bytes cp1252 leaves undefined), so one stray byte does not turn every other
    character of the file into mojibake, and a whole cp1252 file still reads right. The
    lines that needed it are logged (a report of what was repaired)."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    starts = [match.start() for match in NOT_UTF8.finditer(text)]
    if not starts:
        return text

    def as_cp1252(match: re.Match) -> str:
        raw = match.group().encode("utf-8", errors="surrogateescape")
        return "".join(bytes([byte]).decode("cp1252", errors="ignore") or chr(byte) for byte in raw)

    line_ends = [match.start() for match in re.finditer("\n", text)]
    repaired_lines = [bisect.bisect_left(line_ends, start) + 1 for start in starts]
    text = NOT_UTF8.sub(as_cp1252, text)
    if repaired_lines:
        lines = sorted(set(repaired_lines))
        shown = ", ".join(map(str, lines[:10])) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
        logger.warning("%s: %d non-UTF-8 byte sequences read as cp1252 on %d lines (line %s)", path,
                       len(repaired_lines), len(lines), shown)
    return text


def csv_rows(text: str, where: str, error: type[Exception]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV row of ``text``; a row the csv module refuses (a field
    over its 128 KiB limit, a stray quote at the end) raises ``error("<where>, line N: ...")``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise error(f"{where}, line {line}: {err}") from None
        yield line, fields


def read_csv(path: str | Path) -> list[MeldRow]:
    """The rows of a MELD CSV, in file order.

    Tolerates a UTF-8 BOM, CRLF line ends, quoted commas and newlines, padded header
    names, label case and blank lines; bytes that are not UTF-8 are read as cp1252, one by
    one (see ``read_text``), and cp1252 characters read as Latin-1 are repaired by
    ``features.normalize_text``. Raises MeldFormatError
    naming the file and line for a missing column, a bad id, an unknown label or a
    duplicate (Dialogue_ID, Utterance_ID).
    """
    path = Path(path)
    rows_read = csv_rows(read_text(path), str(path), MeldFormatError)
    header = [name.strip() for name in next(rows_read, (1, []))[1]]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise MeldFormatError(f"{path}: missing columns {missing} (header: {header})")
    column = {name: header.index(name) for name in (*COLUMNS, *OPTIONAL_COLUMNS) if name in header}
    rows: list[MeldRow] = []
    first_line: dict[str, int] = {}
    for line, fields in rows_read:
        if not any(field.strip() for field in fields):
            continue
        if len(fields) < len(header):
            raise MeldFormatError(f"{path}, line {line}: expected {len(header)} fields, got {len(fields)}")
        row = parse_row({name: fields[i] for name, i in column.items()}, f"{path}, line {line}", line)
        if row.id in first_line:
            raise MeldFormatError(f"{path}, line {line}: duplicate utterance {row.id} "
                                  f"(Dialogue_ID {row.dialogue_id}, Utterance_ID {row.utterance_id}) "
                                  f"first seen on line {first_line[row.id]}")
        first_line[row.id] = line
        rows.append(row)
    return rows


def parse_row(values: dict[str, str], where: str, line: int) -> MeldRow:
    """A MeldRow from the raw column values; ``where`` prefixes error messages."""
    ids = []
    for name in ("Dialogue_ID", "Utterance_ID"):
        # plain ASCII digits only: int() also reads "1_0" (as 10), " +3" and Unicode digits
        if not re.fullmatch(r"[0-9]+", values[name].strip()):
            raise MeldFormatError(f"{where}: {name} {values[name]!r} is not an integer (digits only)")
        ids.append(int(values[name].strip()))
    emotion = values["Emotion"].strip().lower()
    sentiment = values["Sentiment"].strip().lower()
    if emotion not in EMOTIONS:
        raise MeldFormatError(f"{where}: unknown emotion {values['Emotion']!r}; expected one of {list(EMOTIONS)}")
    if sentiment not in SENTIMENTS:
        raise MeldFormatError(f"{where}: unknown sentiment {values['Sentiment']!r}; "
                              f"expected one of {list(SENTIMENTS)}")
    polarity = None
    if values.get("Polarity", "").strip():
        try:
            polarity = float(values["Polarity"])
        except ValueError:
            polarity = math.nan
        if not math.isfinite(polarity):
            raise MeldFormatError(f"{where}: Polarity {values['Polarity']!r} is not a finite number")
    return MeldRow(utterance_id(*ids), ids[0], ids[1], values["Speaker"], values["Utterance"],
                   emotion, sentiment, line, polarity)


def ordered_dialogues(rows: Iterable[MeldRow]) -> list[list[MeldRow]]:
    """The rows grouped by dialogue, each dialogue in Utterance_ID order."""
    dialogues: dict[int, list[MeldRow]] = defaultdict(list)
    for row in rows:
        dialogues[row.dialogue_id].append(row)
    return [sorted(members, key=lambda row: row.utterance_id) for members in dialogues.values()]


def dialogue_context(rows: Iterable[MeldRow], turns: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """For each row id, the (speaker, utterance) of up to ``turns`` earlier rows of the same
    dialogue (by Utterance_ID), oldest first."""
    context = {}
    for members in ordered_dialogues(rows):
        for i, row in enumerate(members):
            earlier = members[max(0, i - turns): i] if turns else []
            context[row.id] = tuple((other.speaker, other.utterance) for other in earlier)
    return context


def dialogue_following(rows: Iterable[MeldRow], turns: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """For each row id, the (speaker, utterance) of up to ``turns`` later rows of the same
    dialogue (by Utterance_ID), nearest first."""
    following = {}
    for members in ordered_dialogues(rows):
        for i, row in enumerate(members):
            following[row.id] = tuple((other.speaker, other.utterance) for other in members[i + 1: i + 1 + turns])
    return following
