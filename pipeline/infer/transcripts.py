"""Transcripts for inference: a ``--transcripts`` file (a MELD CSV, or a CSV with ``clip,text``
columns) or ``.srt``/``.txt`` sidecar files, with each clip's place in its dialogue.

A MELD CSV places each clip by ``Dialogue_ID``/``Utterance_ID``; a plain CSV may do the same
with ``dialogue`` and ``turn`` columns. A clip with no place is a dialogue of one, so a
dialogue model sees it alone.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.data import meld
from pipeline.media.text import Utterance

SIDECAR_EXTENSIONS = (".srt", ".txt")  # looked up in this order next to each clip
MAX_SIDECAR_BYTES = 1 << 20  # a clip's transcript file beyond this is an error row, never read whole
SRT_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # <i>...</i> and {\an8}-style styling


class InputError(ValueError):
    """Clips or transcripts that cannot be read as asked (the message says what to fix)."""


class SidecarError(ValueError):
    """A clip's own transcript file that cannot be used (its clip gets an error row)."""


def nfc(name: str) -> str:
    """``name`` in Unicode NFC: macOS writes file names decomposed (NFD), CSVs are mostly NFC."""
    return unicodedata.normalize("NFC", name)


@dataclass(frozen=True)
class Transcript:
    """The text of a clip, its place in a dialogue (``dialogue`` key, ``turn``) where the
    transcripts give one and, from a MELD CSV, its labels."""

    utterance: Utterance
    emotion: str | None = None
    sentiment: str | None = None
    dialogue: str | None = None
    turn: int = 0


class TranscriptTable:
    """Transcripts of a ``--transcripts`` file, found for a clip by its full path, file name or stem."""

    def __init__(self, source: Path, kind: str) -> None:
        self.source, self.kind = source, kind
        self.by_path: dict[Path, Transcript] = {}
        self.by_name: dict[str, Transcript] = {}

    def add(self, key: str, transcript: Transcript) -> None:
        """``key``: a file name or stem, or a path (relative to the CSV's folder)."""
        key = nfc(key)
        if os.sep in key or (os.altsep and os.altsep in key):
            table, resolved = self.by_path, nfc(str((self.source.parent / key).resolve()))
        else:
            table, resolved = self.by_name, key
        if resolved in table:
            raise InputError(f"--transcripts {self.source}: two rows for clip {key!r}")
        table[resolved] = transcript

    def find(self, clip: Path) -> Transcript | None:
        found = self.by_path.get(nfc(str(clip.resolve())))
        if found is None:
            found = self.by_name.get(nfc(clip.name)) or self.by_name.get(nfc(clip.stem))
        return found


def read_transcripts(path: Path, context_turns: int, context_after: int = 0) -> TranscriptTable:
    """A MELD CSV (it has ``Dialogue_ID`` and ``Utterance_ID``) or a ``clip,text[,speaker]
    [,dialogue,turn]`` CSV.

    MELD rows are read by ``meld.read_csv`` and get ``meld.dialogue_context`` with
    ``context_turns`` and ``meld.dialogue_following`` with ``context_after`` (the checkpoint's
    ``preprocess.text`` values), as in preprocessing.
    """
    if not path.is_file():
        raise InputError(f"--transcripts {path}: no such file")
    text = meld.read_text(path)  # UTF-8, with any cp1252 bytes read as such (and reported)
    rows = meld.csv_rows(text, f"--transcripts {path}", InputError)
    header = [name.strip() for name in next(rows, (1, []))[1]]
    if {"Dialogue_ID", "Utterance_ID"} <= set(header):
        table = TranscriptTable(path, "MELD CSV")
        utterances = meld.read_csv(path)
        context = meld.dialogue_context(utterances, context_turns)
        following = meld.dialogue_following(utterances, context_after)
        for row in utterances:
            table.add(row.id, Transcript(Utterance(row.utterance, row.speaker, context[row.id], following[row.id]),
                                         row.emotion, row.sentiment, f"dialogue:{row.dialogue_id}",
                                         row.utterance_id))
        return table
    if {"clip", "text"} <= set(header):
        table = TranscriptTable(path, "clip,text CSV")
        for number, fields in rows:
            row = dict(zip(header, fields))
            clip, said = row.get("clip", "").strip(), row.get("text", "").strip()
            dialogue, turn = row.get("dialogue", "").strip(), row.get("turn", "").strip()
            if dialogue and not turn.isdigit():
                raise InputError(f"--transcripts {path}, line {number}: turn {turn!r} of dialogue {dialogue!r} "
                                 "is not a whole number >= 0 (the utterance's position in its dialogue)")
            if clip and said:
                table.add(clip, Transcript(Utterance(said, row.get("speaker", "").strip()),
                                           dialogue=f"dialogue:{dialogue}" if dialogue else None,
                                           turn=int(turn) if dialogue else 0))
        return table
    raise InputError(f"--transcripts {path}: expected a MELD CSV (Utterance, Speaker, Dialogue_ID, "
                     f"Utterance_ID, ...) or a CSV with clip,text columns; the header is {header}")


def same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def read_srt(text: str) -> str:
    """The spoken text of an SRT file: each block's text lines joined by spaces, without the
    block numbers, the ``-->`` timing lines and styling tags."""
    words = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n").strip()):
        lines = [line.strip() for line in block.split("\n")]
        if len(lines) > 1 and lines[0].isdigit() and "-->" in lines[1]:
            lines = lines[2:]
        elif lines and "-->" in lines[0]:
            lines = lines[1:]
        words += [SRT_TAG.sub("", line).strip() for line in lines]
    return " ".join(word for word in words if word)


def read_sidecar(clip: Path, not_transcripts: Sequence[Path] = ()) -> Transcript | None:
    """The transcript in ``<stem>.srt`` or ``<stem>.txt`` next to ``clip`` (None if neither
    exists or it is empty). ``not_transcripts`` (the ``--clips`` list) are never read as one;
    a file over MAX_SIDECAR_BYTES raises SidecarError."""
    for extension in SIDECAR_EXTENSIONS:
        sidecar = clip.with_suffix(extension)
        if sidecar.is_file() and not any(same_file(sidecar, other) for other in not_transcripts):
            size = sidecar.stat().st_size
            if size > MAX_SIDECAR_BYTES:
                raise SidecarError(f"transcript {sidecar.name} is {size / 1e6:.1f} MB, over the "
                                   f"{MAX_SIDECAR_BYTES >> 20} MiB a clip's transcript may have")
            text = sidecar.read_text(encoding="utf-8-sig", errors="replace")
            text = read_srt(text) if extension == ".srt" else " ".join(text.split())
            return Transcript(Utterance(text)) if text else None
    return None
