"""Inference jobs and their decoding: one job per clip (with its transcript and place in a
dialogue), decoded by long-lived worker processes through a bounded window, and cut into the
runs that the model predicts as batches."""
from __future__ import annotations

import logging
import os
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.config import PreprocessConfig, from_dict
from pipeline.data.dialogues import group_dialogues
from pipeline.infer.transcripts import SidecarError, TranscriptTable, read_sidecar
from pipeline.media.decode import ClipError
from pipeline.media.features import extract_features, single_threaded_process
from pipeline.media.text import Utterance
from pipeline.workers import Lost, WorkerPool

logger = logging.getLogger("pipeline.infer")


@dataclass(frozen=True)
class Job:
    """One input clip (picklable: it travels to a decoding worker)."""

    clip: str
    id: str  # file stem (the file name, or the path, where stems repeat)
    utterance: Utterance | None  # None: no transcript, text masked
    emotion: str | None = None
    sentiment: str | None = None
    dialogue: str | None = None  # its dialogue's key (None: a dialogue of its own)
    turn: int = 0
    error: str | None = None  # known before decoding (a transcript over its bound): an error row

    def place(self) -> dict[str, Any]:
        """The item's ``dialogue`` entry (see pipeline.data.dialogues)."""
        return {"key": self.dialogue or f"clip:{self.clip}", "turn": self.turn,
                "speaker": self.utterance.speaker if self.utterance is not None and self.utterance.speaker else None}


def make_jobs(clips: Sequence[Path], transcripts: TranscriptTable | None,
              not_transcripts: Sequence[Path] = ()) -> list[Job]:
    """A job per clip, with its transcript from ``transcripts`` or, when None, its sidecar
    (``not_transcripts``, e.g. the ``--clips`` list, are never read as one)."""
    jobs = []
    for clip, id_ in zip(clips, clip_ids(clips)):
        error = None
        try:
            found = transcripts.find(clip) if transcripts is not None else read_sidecar(clip, not_transcripts)
        except SidecarError as err:
            found, error = None, str(err)
        jobs.append(Job(str(clip), id_, found.utterance if found else None,
                        found.emotion if found else None, found.sentiment if found else None,
                        found.dialogue if found else None, found.turn if found else 0, error))
    matched = sum(job.utterance is not None for job in jobs)
    source = f"{transcripts.kind} {transcripts.source}" if transcripts else "sidecar .srt/.txt files"
    logger.info("%d clips; transcripts for %d of them (%s)", len(jobs), matched, source)
    if transcripts is not None and matched == 0:
        logger.warning("no clip matched a row of %s: every clip is predicted with its text masked",
                       transcripts.source)
    return jobs


def clip_ids(clips: Sequence[Path]) -> list[str]:
    """Each clip's id: its stem, or where stems repeat (``x.mkv`` beside ``x.mp4``) its file
    name, or where names repeat too (``a/x.mp4``, ``b/x.mp4``) its path."""
    stems = Counter(clip.stem for clip in clips)
    names = Counter(clip.name for clip in clips)
    return [clip.stem if stems[clip.stem] == 1 else clip.name if names[clip.name] == 1 else str(clip)
            for clip in clips]


@dataclass
class Decoded:
    """The features of a job (``arrays``/``modalities`` as extract_features returns them), or
    the reason it could not be decoded."""

    job: Job
    arrays: dict[str, np.ndarray] | None
    modalities: list[str]
    error: str | None = None


class ClipDecoder:
    """What a decoding process builds once: the checkpoint's preprocessing config and tokenizer."""

    def __init__(self, preprocess: Mapping[str, Any]) -> None:
        self.pcfg = from_dict(PreprocessConfig, dict(preprocess), "preprocess")
        self.tokenizer = None
        if "text" in self.pcfg.modalities:
            from encoders.text import load_tokenizer

            self.tokenizer = load_tokenizer(self.pcfg.text.model)

    def __call__(self, job: Job) -> Decoded:
        if job.error is not None:
            return Decoded(job, None, [], job.error)
        try:
            arrays, modalities = extract_features(job.clip, job.utterance, self.pcfg, self.tokenizer)
        except ClipError as err:
            return Decoded(job, None, [], err.reason)
        except Exception as err:  # a bug, not a bad clip: report it loudly but keep the other rows
            logger.error("%s: decoding failed:\n%s", job.clip, traceback.format_exc())
            return Decoded(job, None, [], f"internal error: {type(err).__name__}: {err}")
        return Decoded(job, arrays, modalities)


_decoder: ClipDecoder | None = None  # the ClipDecoder of a pool process


def init_decoder(preprocess: Mapping[str, Any]) -> None:
    global _decoder
    single_threaded_process()
    _decoder = ClipDecoder(preprocess)


def decode_job(job: Job) -> Decoded:
    return _decoder(job)


class DecodePool:
    """Decodes jobs in ``workers`` long-lived processes (0: in this process; see
    ``pipeline.workers``: a worker that dies costs only the clip it held), yielding results
    in input order while at most ``lookahead`` jobs are in flight, so memory stays bounded
    when the model is slower than decoding. ``start()`` it, then use it as a context manager:
    the worker processes live until the ``with`` block ends."""

    def __init__(self, preprocess: Mapping[str, Any], workers: int, lookahead: int) -> None:
        self.preprocess, self.workers, self.lookahead = dict(preprocess), workers, max(1, lookahead)
        self.pool: Any = None
        self.local: ClipDecoder | None = None

    def start(self) -> "DecodePool":
        """Build a decoder here first, so that a tokenizer that cannot be loaded fails now with
        its message (a pool initializer that raises would be restarted forever), then start
        the worker processes."""
        self.local = ClipDecoder(self.preprocess)
        if self.workers > 0:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer is used across a fork
            self.pool = WorkerPool(self.workers, init_decoder, (self.preprocess,), decode_job).start()
        return self

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.pool is not None:
            self.pool.terminate()

    def imap(self, jobs: Iterable[Job]) -> Iterator[tuple[Decoded, bool]]:
        """``(decoded, next_ready)`` for each job in the order of ``jobs``; ``next_ready`` says
        whether the following job's result is already there (always True in this process)."""
        if self.pool is None:
            yield from ((decoded, True) for decoded in map(self.local, jobs))
            return
        for job, outcome, next_ready in self.pool.imap(jobs, self.lookahead):
            # a worker killed on this clip (e.g. by the out-of-memory killer): an error row, the run goes on
            yield (Decoded(job, None, [], outcome.reason) if isinstance(outcome, Lost) else outcome), next_ready


def batches(decoded: Iterable[tuple[Decoded, bool]], batch_size: int) -> Iterator[list[Decoded]]:
    """Consecutive runs of decoded clips (errors ride along, so rows leave in input order),
    each with at most ``batch_size`` ok clips.

    A run is handed over when it is full or, while batches ramp up, as soon as the next clip
    is not decoded yet and the run holds at least twice the ok clips of the previous one (1 at
    first). So the model starts on the first decoded clip instead of idling until a whole
    batch is decoded (the pipeline's fill), and batch sizes double up to ``batch_size`` and
    then stay full: a small batch costs up to twice the CPU per clip, CPU that decoding needs
    when it is the bottleneck.
    """
    run: list[Decoded] = []
    ok, early = 0, 1
    for item, next_ready in decoded:
        run.append(item)
        ok += item.error is None
        if ok == batch_size or (ok >= early and not next_ready):
            yield run
            run, ok, early = [], 0, min(batch_size, 2 * ok)
    if run:
        yield run


def in_dialogue_order(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` with each dialogue's clips together in turn order (dialogues in order of their
    first clip): what a dialogue model reads."""
    return [jobs[i] for group in group_dialogues([job.place() for job in jobs]) for i in group]


def dialogue_batches(decoded: Iterable[tuple[Decoded, bool]], batch_size: int) -> Iterator[list[Decoded]]:
    """Runs of whole dialogues from a stream in dialogue order (:func:`in_dialogue_order`), at
    most ``batch_size`` clips each unless one dialogue is longer, so the dialogue model sees
    every turn of a dialogue together."""
    run: list[Decoded] = []
    dialogue: list[Decoded] = []
    for item, _ in decoded:
        if dialogue and item.job.place()["key"] != dialogue[0].job.place()["key"]:
            if run and len(run) + len(dialogue) > batch_size:
                yield run
                run = []
            run, dialogue = run + dialogue, []
        dialogue.append(item)
    if run and len(run) + len(dialogue) > batch_size:
        yield run
        run = []
    if run + dialogue:
        yield run + dialogue
