"""Preprocessing at work: the plan of each split (CSV rows, clips, unlabelled extras), the
worker pool that turns clips into cache entries, and the manifest of each finished split.
The command line is :mod:`pipeline.preprocess.cli`; the cache layout :mod:`pipeline.data.cache`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from pipeline.config import PreprocessConfig, from_dict, to_dict
from pipeline.data import cache, cache_writer, meld
from pipeline.media.decode import ClipError
from pipeline.media.features import extract_features, single_threaded_process
from pipeline.media.text import Utterance, normalize_text
from pipeline.workers import Lost, WorkerPool

logger = logging.getLogger(__name__)

NO_LABEL = "no label"
WORKER_DIED = "worker process "  # how the reason of a clip lost to a dead worker starts (pipeline.workers)


@dataclass(frozen=True)
class Task:
    """One CSV row to turn into features (picklable: it travels to a worker process)."""

    split_dir: str
    row: dict[str, Any]  # the manifest row, without status, reason and modalities yet
    clip: str | None  # None in a text-only cache
    utterance: Utterance


# --------------------------------------------------------------------------- planning
def manifest_row(split: str, row: meld.MeldRow) -> dict[str, Any]:
    record = {"id": row.id, "split": split, "status": None, "reason": None, "modalities": [],
              "emotion": row.emotion, "sentiment": row.sentiment, "speaker": normalize_text(row.speaker),
              "dialogue_id": row.dialogue_id, "utterance_id": row.utterance_id,
              "text": normalize_text(row.utterance)}
    if row.polarity is not None:  # the CSV's optional Polarity column
        record["polarity"] = row.polarity
    return record


def unlabelled_row(split: str, clip_id: str) -> dict[str, Any]:
    return {"id": clip_id, "split": split, "status": "skipped", "reason": NO_LABEL, "modalities": [],
            "emotion": None, "sentiment": None, "speaker": None, "dialogue_id": None,
            "utterance_id": None, "text": None}


def plan_split(split: str, csv_path: Path, clip_dir: Path | None, split_dir: Path,
               pcfg: PreprocessConfig) -> tuple[list[Task], list[dict[str, Any]]]:
    """(a task per CSV row, a "no label" row per clip on disk that no row names)."""
    rows = meld.read_csv(csv_path)
    context = meld.dialogue_context(rows, pcfg.text.context_turns)
    following = meld.dialogue_following(rows, pcfg.text.context_after)
    tasks = []
    for row in rows:
        clip = clip_dir / f"{row.id}.mp4" if clip_dir is not None else None
        entry = {**manifest_row(split, row), "source": source_of(row, context[row.id], clip, following[row.id])}
        tasks.append(Task(str(split_dir), entry, str(clip) if clip is not None else None,
                          Utterance(row.utterance, row.speaker, context[row.id], following[row.id])))
    labelled = {row.id for row in rows}
    extras = [] if clip_dir is None else [
        unlabelled_row(split, clip_id) for clip_id in meld.clip_files(clip_dir) if clip_id not in labelled]
    return tasks, extras


def source_of(row: meld.MeldRow, context: Sequence[tuple[str, str]], clip: Path | None,
              following: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """What an entry was made from, stored in its manifest row (``source``): a hash of its CSV
    row as read (text, speaker, labels, ids, and the dialogue turns it is tokenised with)
    and its clip's size and modification time (None: no clip on disk). An entry whose source
    differs on a rerun (a corrected label or text, a clip added, replaced or repaired) is
    made again; the parameters are the cache's key (meta.json)."""
    fields = [row.dialogue_id, row.utterance_id, row.speaker, row.utterance, row.emotion, row.sentiment,
              [list(turn) for turn in context]]
    if following:  # left out when empty: the sources of caches made before context_after keep their hash
        fields.append([list(turn) for turn in following])
    source: dict[str, Any] = {
        "row": hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]}
    if clip is not None:
        try:
            stat = clip.stat()
            source["clip"] = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            source["clip"] = None
    return source


def up_to_date(record: dict[str, Any] | None, row: dict[str, Any]) -> bool:
    """Whether a stored entry is what this run would make: same source, and not lost to a
    worker that died on it (a rerun tries those again)."""
    return (record is not None and record.get("source") == row.get("source")
            and not str(record.get("reason") or "").startswith(WORKER_DIED))


def in_shard(id_: str, num_shards: int, shard_id: int) -> bool:
    """Deterministic on every machine (unlike ``hash()``, which is salted per process)."""
    return int(hashlib.sha1(id_.encode("utf-8")).hexdigest()[:8], 16) % num_shards == shard_id


# --------------------------------------------------------------------------- workers
class Worker:
    """What a worker process builds once: the config and the tokenizer."""

    def __init__(self, preprocess: dict[str, Any]) -> None:
        self.pcfg = from_dict(PreprocessConfig, preprocess, "preprocess")
        self.tokenizer = None
        if "text" in self.pcfg.modalities:
            # Imported here: the encoders package takes seconds to import, which a rerun
            # with nothing to do, or --merge, should not pay.
            from encoders.text import load_tokenizer

            self.tokenizer = load_tokenizer(self.pcfg.text.model)

    def process(self, task: Task) -> dict[str, Any]:
        """Extract and store the features of ``task``; return its manifest row."""
        row, notes = dict(task.row), {}
        try:
            arrays, modalities = extract_features(task.clip, task.utterance, self.pcfg, self.tokenizer, notes)
        except ClipError as err:
            row.update(status="skipped", reason=err.reason, modalities=[])
            cache_writer.write_entry(task.split_dir, row)
            return row
        except Exception as err:  # a bug, not a bad clip: stop, naming the sample
            raise RuntimeError(f"{row['id']} ({task.clip}): {err!r}") from err
        row.update(status="ok", reason=None, modalities=modalities, **notes)  # face_frames with face_crop
        cache_writer.write_entry(task.split_dir, row, arrays)
        return row


_worker: Worker | None = None  # the Worker of a pool process


def init_worker(preprocess: dict[str, Any]) -> None:
    global _worker
    single_threaded_process()
    _worker = Worker(preprocess)


def process_task(task: Task) -> dict[str, Any]:
    return _worker.process(task)


def lost_row(task: Task, reason: str) -> dict[str, Any]:
    """The skipped row of a task whose worker process died on it (written by the parent;
    a rerun tries it again, see ``preprocess_split``)."""
    row = dict(task.row)
    row.update(status="skipped", reason=reason, modalities=[])
    cache_writer.write_entry(task.split_dir, row)
    return row


class Runner:
    """Runs tasks in this process (workers <= 1) or in a pool of long-lived worker
    processes (``pipeline.workers``), each with its own tokenizer, started on first use and
    shared by all splits. A worker that dies (SIGKILL from the out-of-memory killer) costs
    the clip it held, recorded as skipped with the reason, and is replaced; the run goes on."""

    def __init__(self, preprocess: dict[str, Any], workers: int) -> None:
        # Built here, before any cache file is written: a tokenizer that cannot be loaded
        # stops the run with its message (a pool would restart a failing worker forever, and
        # a meta.json written first would refuse the corrected rerun).
        self.local = Worker(preprocess)
        self.preprocess = preprocess
        self.workers = workers
        self.pool: Any = None

    def run(self, tasks: Sequence[Task]) -> Iterable[dict[str, Any]]:
        """The manifest rows of ``tasks``, in completion order."""
        if self.workers <= 1:
            return map(self.local.process, tasks)
        if self.pool is None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            self.pool = WorkerPool(self.workers, init_worker, (self.preprocess,), process_task).start()
        return (lost_row(task, outcome.reason) if isinstance(outcome, Lost) else outcome
                for task, outcome in self.pool.imap_unordered(tasks))

    def close(self, failed: bool) -> None:
        if self.pool is not None:
            if failed:
                self.pool.terminate()
            else:
                self.pool.close()


# --------------------------------------------------------------------------- one split
def preprocess_split(split: str, tasks: Sequence[Task], extras: Sequence[dict[str, Any]],
                     split_dir: Path, pcfg: PreprocessConfig, runner: Runner, num_shards: int,
                     shard_id: int) -> None:
    """Process this shard's pending ids of ``split``, then merge if every shard is done."""
    ids = [task.row["id"] for task in tasks] + [row["id"] for row in extras]
    cache_writer.prepare_split(split_dir, split, to_dict(pcfg), ids)
    mine = [id_ for id_ in ids if in_shard(id_, num_shards, shard_id)]
    mine_set = set(mine)
    records = cache_writer.read_records(split_dir, mine)
    for row in extras:
        if row["id"] in mine_set and (records.get(row["id"]) or {}).get("reason") != NO_LABEL:
            cache_writer.forget_entries(split_dir, [row["id"]])
            cache_writer.write_entry(split_dir, row)
    pending = [task for task in tasks if task.row["id"] in mine_set and not up_to_date(records.get(task.row["id"]), task.row)]
    stale = [task.row["id"] for task in pending if task.row["id"] in records]
    if stale:  # their old arrays and rows must not outlive them, nor a manifest that lists them
        lost = sum(str(records[id_].get("reason") or "").startswith(WORKER_DIED) for id_ in stale)
        logger.info("%s: %d entries to make again: %d whose CSV row or clip changed since they were cached, "
                    "%d lost to a worker that died (e.g. %s)", split, len(stale), len(stale) - lost, lost,
                    ", ".join(stale[:5]))
        cache_writer.forget_entries(split_dir, stale)
    logger.info("%s: %d rows, %d unlabelled clips; shard %d/%d: %d ids, %d to do", split,
                len(tasks), len(extras), shard_id, num_shards, len(mine), len(pending))
    check_space(split, split_dir, len(pending), to_dict(pcfg))
    start = time.perf_counter()
    if pending:
        with tqdm(total=len(pending), unit="clip", desc=split, dynamic_ncols=True) as bar:
            for _ in runner.run(pending):
                bar.update()
    elapsed = time.perf_counter() - start
    complete = not pending and manifest_intact(split_dir)
    missing = [] if complete else cache_writer.merge_split(split_dir)
    log_summary(split, split_dir, mine, len(pending), elapsed, missing)


class NoSpaceError(OSError):
    """The entries to make cannot fit on the cache's disk."""


def check_space(split: str, split_dir: Path, count: int, preprocess: dict[str, Any]) -> None:
    """Say what ``count`` new entries will cost, and refuse (NoSpaceError) when their fixed
    part alone (tokens and frames) exceeds the free space of ``split_dir``'s disk, before any
    clip is decoded: ``preprocess.video.size=2240`` for 224 makes every entry 100 times larger."""
    if not count:
        return
    fixed, variable = cache.entry_bytes(preprocess, preprocess["modalities"])
    free = shutil.disk_usage(split_dir).free
    logger.info("%s: the %d new entries take %.1f MB, and up to %.1f MB more for audio (%.2f MB an entry at most); "
                "%.1f GB free", split, count, count * fixed / 1e6, count * variable / 1e6,
                (fixed + variable) / 1e6, free / 1e9)
    if count * fixed > free:
        raise NoSpaceError(f"{split}: {count} entries of {fixed / 1e6:.1f} MB each ({count * fixed / 1e9:.1f} GB) "
                           f"do not fit in the {free / 1e9:.1f} GB free at {split_dir}; check preprocess.video.size "
                           "and num_frames (their product sets most of it) or free space")


def manifest_intact(split_dir: Path) -> bool:
    """Whether ``manifest.jsonl`` exists and lists every id; one cut short or damaged is
    logged, and written again from the status records by the caller."""
    if not (split_dir / "manifest.jsonl").is_file():
        return False
    try:
        cache.read_manifest(split_dir)
    except cache.DamagedManifestError as err:
        logger.warning("%s: %s; writing it again from the status records", split_dir / "manifest.jsonl",
                       err.problem)
        return False
    return True


def log_summary(split: str, split_dir: Path, ids: Sequence[str], processed: int, elapsed: float,
                missing: Sequence[str]) -> None:
    """One line: ok, skipped by reason, time and rate of this run, manifest state."""
    statuses = [cache.read_json(cache.status_path(split_dir, id_)) for id_ in ids]
    ok = sum(row["status"] == "ok" for row in statuses)
    reasons = Counter(row["reason"] for row in statuses if row["status"] != "ok")
    skipped = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    rate = processed / elapsed if elapsed > 0 else 0.0
    manifest = (f"manifest {split_dir / 'manifest.jsonl'}" if not missing
                else f"{len(missing)} ids of other shards still to do, manifest not written yet")
    logger.info("%s: %d ok, %d skipped%s; %d clips in %.1fs (%.2f clips/s); %s", split, ok,
                sum(reasons.values()), f" ({skipped})" if skipped else "", processed, elapsed, rate,
                manifest)


def merge(out_dir: Path, splits: Sequence[str]) -> int:
    """Write the manifest of each finished split; 1 if any split is still incomplete."""
    status = 0
    for split in splits:
        split_dir = out_dir / split
        if not (split_dir / "ids.json").is_file():
            logger.info("%s: no cache in %s", split, split_dir)
            continue
        missing = cache_writer.merge_split(split_dir)
        if missing:
            status = 1
            logger.error("%s: %d ids have no status yet (e.g. %s); run the remaining shards",
                         split, len(missing), ", ".join(missing[:5]))
        else:
            logger.info("%s: wrote %s", split, split_dir / "manifest.jsonl")
    return status
